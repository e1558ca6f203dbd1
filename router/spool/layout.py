"""The spool folder's layout, and its recovery at start-up from whatever a crash left.

    incoming/     partial receives (pynetdicom's temporary files); cleared at start-up
    work/         `modify` outputs while a C-STORE is handled; cleared at start-up
    placing/      links to store destinations' temporary names (router.spool.durable's
                  journal); the files they name are removed at start-up
    objects/      one file per queued instance, however many destinations want it
    queue.db      SQLite (WAL, synchronous=FULL): objects and deliveries (router.spool.queue)
    decisions.db  SQLite (WAL): one row per C-STORE, read by `trace`
    metrics/      per-process Prometheus files when `metrics` is on (router.observe.metrics)
    lock          held exclusively by the running daemon
    workers.lock  held shared by its receiving workers (router.process.workers)

Nothing in incoming/, work/ or placing/ was ever acknowledged to a sender, so removing it
loses nothing; objects/ files without rows are the queue's to collect (`collect_garbage`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from router.errors import StartupError
from router.spool.durable import JOURNAL, remove_leftovers

# Start-up's messages, under the logger name users know them by.
log = logging.getLogger("router.daemon")

INCOMING = "incoming"
WORK = "work"
PLACING = JOURNAL
OBJECTS = "objects"
LOCK = "lock"
WORKERS_LOCK = "workers.lock"


def recover(root: Path, workers_timeout: float) -> int:
    """Lock the spool for this daemon and clear what a crashed run left; return the lock.

    The lock (a file descriptor) is held as long as it stays open: for the daemon's life.
    StartupError when another daemon holds it, or when a previous daemon's receiving
    workers are still writing after `workers_timeout` seconds.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"spool {root} is in use by another dicom-router") from None
    try:
        wait_for_old_workers(root, workers_timeout)
        for name in (INCOMING, WORK):
            folder = root / name
            folder.mkdir(exist_ok=True)
            for stale in folder.iterdir():  # partial receives, modify outputs
                stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale)
        journal = root / PLACING
        journal.mkdir(exist_ok=True)
        for leftover in remove_leftovers(journal):
            log.info("removed %s, left by a run killed while storing it", leftover)
    except BaseException:
        os.close(fd)  # the daemon does not start: the next one may take the lock
        raise
    return fd


def wait_for_old_workers(root: Path, timeout: float) -> None:
    """Wait until no receiving worker of a previous (killed) daemon still writes here.

    They hold `workers.lock` shared and get SIGTERM when their main process dies; they
    are gone once an exclusive lock is granted.
    """
    fd = os.open(root / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"spool {root}: workers of a previous dicom-router still running"
                    ) from None
                time.sleep(0.1)
    finally:
        os.close(fd)  # releases the lock: our own workers take it shared
