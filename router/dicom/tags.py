"""DICOM constants and small types shared by the walk, the header, modify and transcode."""

from __future__ import annotations

TagValues = tuple[str, ...]
"""A tag's value as text, one item per value (VM > 1 gives several); () when empty."""
