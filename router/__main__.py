"""`python -m router` is the `dicom-router` console script."""

from router.cli import main

raise SystemExit(main())
