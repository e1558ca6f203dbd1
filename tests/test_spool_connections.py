"""The spool's SQLite connections (issue 7 row 10): borrowed per write, few kept idle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from router.spool import IDLE_CONNECTIONS, DecisionRecord, Spool


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def record(spool: Spool, n: int) -> None:
    """One decision-log row, as a C-STORE's thread writes it."""
    spool.record(
        DecisionRecord(
            time.time(), f"1.2.{n}", "", "", "1.2", "AE", "RTR", "::1", "r", "", 0, None, "v"
        )
    )


def test_threads_that_end_leave_no_connections_open(tmp_path: Path) -> None:
    """100 short threads each writing a row: at most IDLE_CONNECTIONS stay open (3 fds each)."""
    spool = Spool(tmp_path / "spool")
    record(spool, 0)
    before = open_fds()
    for n in range(100):
        thread = threading.Thread(target=record, args=(spool, n))
        thread.start()
        thread.join()
    assert open_fds() - before <= 3 * IDLE_CONNECTIONS
    assert len(spool.trace("1.2.99")[0]) == 1


def test_concurrent_threads_each_get_their_own_connection(tmp_path: Path) -> None:
    """16 threads writing at once all succeed; afterwards at most IDLE_CONNECTIONS stay."""
    spool = Spool(tmp_path / "spool")
    record(spool, 0)
    before = open_fds()
    threads = [
        threading.Thread(target=lambda k=k: [record(spool, k * 100 + i) for i in range(20)])
        for k in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert open_fds() - before <= 3 * IDLE_CONNECTIONS
    assert sum(len(spool.trace(f"1.2.{k * 100 + 19}")[0]) for k in range(16)) == 16


def test_close_closes_the_idle_connections(tmp_path: Path) -> None:
    """After close() the spool holds no descriptor of its databases."""
    before = open_fds()
    spool = Spool(tmp_path / "spool")
    record(spool, 1)
    spool.close()
    assert open_fds() == before
