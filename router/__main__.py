"""`python -m router` is the `dicom-router` console script."""

from router.launch import main

if __name__ == "__main__":  # a child imports this module: it must not run main() again
    raise SystemExit(main())
