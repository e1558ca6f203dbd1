"""DICOM knowledge with no I/O policy: statuses, SOP classes, the structural walk, headers."""
