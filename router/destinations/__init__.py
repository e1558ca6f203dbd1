"""Sending to destinations: DICOM, STOW-RS, the queue workers that drive them."""
