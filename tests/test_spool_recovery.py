"""Start-up after a crash (design §5): what a killed run left is cleared, nothing acked is lost."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from router.errors import StartupError
from router.spool import layout
from router.spool.database import Spool
from router.spool.queue import Instance

CT = Instance("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.2.3", "1.2.3.1")

# A run that takes a delivery to send it and is killed (kill -9) before its outcome is known.
KILLED_WHILE_SENDING = """
import os, signal, sys
from pathlib import Path
from router.spool.database import Instance, Spool
spool = Spool(Path(sys.argv[1]))
received = Path(sys.argv[1]) / "received.dcm"
received.write_bytes(b"DICOM BYTES")
spool.enqueue(received, ["pacs"], Instance("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2"))
(delivery,) = spool.due("pacs", 1)
print(delivery.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def start(root: Path) -> tuple[Spool, int]:
    """What the daemon does at start-up: recover the folders, open the spool, collect."""
    lock = layout.recover(root, workers_timeout=1.0)
    spool = Spool(root)
    spool.collect_garbage(grace=0)
    return spool, lock


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A spool folder as a previous run made it."""
    path = tmp_path / "spool"
    Spool(path).close()
    return path


def test_a_delivery_in_flight_when_killed_is_due_again(root: Path) -> None:
    """Killed mid-send, the delivery is still pending: the next run sends it (at least once)."""
    run = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SENDING, str(root)], capture_output=True, text=True
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    spool, lock = start(root)
    try:
        (again,) = spool.due("pacs", 10)
        assert (again.id, again.attempts) == (int(run.stdout), 0)
        assert again.path.read_bytes() == b"DICOM BYTES"
    finally:
        os.close(lock)


def test_a_file_spooled_without_its_rows_is_removed(root: Path) -> None:
    """Killed between the link into objects/ and the commit: never acked, so removed."""
    orphan = root / "objects" / f"{'0' * 32}.dcm"
    orphan.write_bytes(b"linked, rows never committed")
    os.close(start(root)[1])
    assert not orphan.exists()


def test_queued_files_and_dead_letters_survive_recovery(root: Path, tmp_path: Path) -> None:
    """Recovery never removes what a pending delivery or a dead letter needs."""
    received = tmp_path / "received.dcm"
    received.write_bytes(b"DICOM BYTES")
    before = Spool(root)
    pending = before.enqueue(received, ["pacs"], CT)
    dead = before.enqueue(received, ["archive"], CT)
    before.dead_letter(before.due("archive", 1)[0].id, None, "gave up")
    before.close()
    spool, lock = start(root)
    os.close(lock)
    assert spool.path_of(pending).exists() and spool.path_of(dead).exists()
    assert spool.depth() == {"pacs": (1, 0), "archive": (0, 1)}


def test_partial_receives_and_modify_outputs_are_cleared(root: Path) -> None:
    """incoming/ and work/ hold nothing a sender was answered for: emptied at start-up."""
    for name in ("incoming", "work"):
        (root / name / "sub").mkdir(parents=True)
        (root / name / "sub" / "part").write_bytes(b"half")
        (root / name / "1234-0.dcm").write_bytes(b"half")
    os.close(start(root)[1])
    assert list((root / "incoming").iterdir()) == [] and list((root / "work").iterdir()) == []


def test_temporary_files_of_a_killed_store_are_removed(root: Path, tmp_path: Path) -> None:
    """A store killed mid-placement left a temporary name noted in placing/: both go."""
    archive = tmp_path / "archive" / "P1"
    archive.mkdir(parents=True)
    token = "0123456789abcdef0123456789abcdef"
    leftover = archive / f".x.dcm.{token}.tmp"
    leftover.write_bytes(b"half")
    (root / "placing").mkdir()
    os.symlink(leftover, root / "placing" / token)
    os.close(start(root)[1])
    assert not leftover.exists() and list((root / "placing").iterdir()) == []


def test_a_spool_in_use_by_another_daemon_is_refused(root: Path) -> None:
    """Two daemons on one spool would hand out each delivery twice: the second refuses."""
    lock = layout.recover(root, workers_timeout=1.0)
    try:
        with pytest.raises(StartupError, match="in use by another dicom-router"):
            layout.recover(root, workers_timeout=1.0)
    finally:
        os.close(lock)


def test_the_lock_is_free_again_once_its_holder_closes_it(root: Path) -> None:
    """The daemon's lock lives as long as its descriptor: a later run takes it."""
    os.close(layout.recover(root, workers_timeout=1.0))
    os.close(layout.recover(root, workers_timeout=1.0))


def test_workers_of_a_killed_daemon_still_writing_stop_the_start(root: Path) -> None:
    """Receiving workers that outlive their daemon (holding workers.lock) block start-up."""
    worker = os.open(root / "workers.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(worker, fcntl.LOCK_SH)
    try:
        with pytest.raises(StartupError, match="workers of a previous dicom-router"):
            layout.recover(root, workers_timeout=0.3)
    finally:
        os.close(worker)


def test_a_refused_start_leaves_the_spool_unlocked(root: Path) -> None:
    """When recovery fails the lock is released: the next attempt is not refused for it."""
    worker = os.open(root / "workers.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(worker, fcntl.LOCK_SH)
    with pytest.raises(StartupError):
        layout.recover(root, workers_timeout=0.1)
    os.close(worker)
    os.close(layout.recover(root, workers_timeout=1.0))
