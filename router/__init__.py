"""dicom-router: a declarative, config-driven DICOM storage routing daemon."""

__version__ = "0.1.0"
