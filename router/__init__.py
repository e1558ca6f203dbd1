"""dicom-router: a declarative, config-driven DICOM storage routing daemon."""

from router import lazy_gdcm

__version__ = "0.1.0"

lazy_gdcm.defer()  # before pydicom is imported anywhere in this process
