"""A pytest plugin that runs pynetdicom's own tests with router/netlayer installed.

    make pynetdicom-tests

The installed wheel of the pinned pynetdicom (3.0.4) ships its test suite as
`pynetdicom.tests`; this plugin installs our changes before those tests import anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from router import netlayer


def pytest_configure(config: pytest.Config) -> None:
    """Install the changes (received datasets go to a scratch folder)."""
    netlayer.install(Path(tempfile.mkdtemp(prefix="netlayer-upstream-")))
