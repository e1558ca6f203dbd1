"""The spool's SQLite connections (issue 7 row 10): borrowed per write, few kept idle."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from router.spool.database import Spool
from router.spool.db import IDLE_CONNECTIONS
from router.spool.decisions import DecisionRecord


def open_fds(folder: Path) -> int:
    """How many file descriptors this process holds on files below `folder`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # fds come and go (listdir's own, other threads)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/")
    return count


def record(spool: Spool, n: int) -> None:
    """One decision-log row, as a C-STORE's thread writes it."""
    spool.record_many(
        [
            DecisionRecord(
                time.time(), f"1.2.{n}", "", "", "1.2", "AE", "RTR", "::1", "r", "", 0, None, "v"
            )
        ]
    )


def test_threads_that_end_leave_no_connections_open(tmp_path: Path) -> None:
    """100 short threads each writing a row: at most IDLE_CONNECTIONS stay open (3 fds each)."""
    spool = Spool(tmp_path / "spool")
    record(spool, 0)
    before = open_fds(tmp_path)
    for n in range(100):
        thread = threading.Thread(target=record, args=(spool, n))
        thread.start()
        thread.join()
    assert open_fds(tmp_path) - before <= 3 * IDLE_CONNECTIONS
    assert len(spool.trace("1.2.99")[0]) == 1


def burst(spool: Spool, threads: int, rows: int) -> None:
    """`threads` threads writing `rows` decision rows each, all at once."""
    running = [
        threading.Thread(target=lambda k=k: [record(spool, k * 1000 + i) for i in range(rows)])
        for k in range(threads)
    ]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()


def test_concurrent_threads_hold_descriptors_bounded_by_their_peak(tmp_path: Path) -> None:
    """16 threads writing at once, ten times over: never more than 3 fds per thread, and
    none once the spool is closed.

    SQLite keeps a closed connection's descriptors while another connection of the
    process holds locks on that file (closing them would drop those locks), and reuses
    them: the count follows the peak of concurrent writers, not their total.
    """
    spool = Spool(tmp_path / "spool")
    peak = 0
    for _ in range(10):
        burst(spool, 16, 20)
        peak = max(peak, open_fds(tmp_path))
    assert 0 < peak <= 3 * 16
    assert sum(len(spool.trace(f"1.2.{k * 1000 + 19}")[0]) for k in range(16)) == 160  # 10 bursts
    spool.close()
    assert open_fds(tmp_path) == 0


def test_close_closes_the_idle_connections(tmp_path: Path) -> None:
    """After close() the spool holds no descriptor of its databases."""
    before = open_fds(tmp_path)
    spool = Spool(tmp_path / "spool")
    record(spool, 1)
    spool.close()
    assert open_fds(tmp_path) == before == 0
