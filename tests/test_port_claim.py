"""One dicom-router per port: a second daemon on a port in use is a start-up error."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.peers import echoscu
from tests.test_workers import with_workers

pytestmark = pytest.mark.interop


def run_second(first: RouterDaemon, folder: Path, workers: int) -> subprocess.CompletedProcess[str]:
    """`dicom-router run` with its own rule file and spool on the first daemon's port."""
    folder.mkdir()
    config = folder / "router.yaml"
    config.write_text(with_workers(workers).replace("{port}", str(first.port)))
    return subprocess.run(
        [DICOM_ROUTER, "run", "-c", config], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_daemon_on_the_port_exits_2_naming_the_first(
    router: Callable[..., RouterDaemon], tmp_path: Path, workers: int
) -> None:
    """Exit 2, one line on stderr with the first daemon's PID; the first serves on."""
    first = router(with_workers(workers))
    run = run_second(first, tmp_path / "second", workers)
    assert run.returncode == 2, run
    assert first.proc is not None
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert f"in use by another dicom-router (pid {first.proc.pid}:" in lines[0], lines
    assert echoscu(first.port).returncode == 0


def test_the_port_is_free_for_a_new_daemon_after_kill_9(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """A main process killed with -9 leaves no claim behind: the next daemon on its port starts."""
    first = router(with_workers(2))
    first.signal(signal.SIGKILL)  # its workers and forwarder end by themselves
    assert first.proc is not None
    first.proc.wait(10)
    second = RouterDaemon(tmp_path / "second", with_workers(2), port=first.port).start()
    try:
        assert echoscu(second.port).returncode == 0
        second.wait_log("listening on")
    finally:
        second.stop()
