"""The fork server's preload: every child of the daemon is a fork of a process that
imported these modules once. multiprocessing skips a preload name that fails to import,
without a word: a rename would only make every child (and every restart) import for a
second. These tests make it fail loudly instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from router.process import forkserver
from router.process.forwarder import forwarder_main
from router.process.workers import worker_main


@pytest.mark.parametrize("name", forkserver.PRELOAD)
def test_every_module_the_fork_server_preloads_imports(name: str) -> None:
    """Each PRELOAD name imports in a fresh interpreter, as in the fork server."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_fork_server_preloads_the_module_of_every_child_entry_point() -> None:
    """The receiving worker's and the forwarder's entry points are in preloaded modules."""
    entry_points = {worker_main.__module__, forwarder_main.__module__}
    assert entry_points <= set(forkserver.PRELOAD)
