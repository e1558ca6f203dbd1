"""The queue as a monitor sees it: short read-only looks at queue.db (the exporter's)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.spool.db import QUEUE_DB
from router.spool.queue import DEAD_LETTER, PENDING


@dataclass(frozen=True)
class QueueStats:
    """One destination's queue as a monitor sees it."""

    pending: int = 0
    dead_letters: int = 0
    oldest_pending: float | None = None  # received_at (epoch s) of the oldest pending


def queue_stats(root: Path, destinations: Sequence[str]) -> dict[str, QueueStats]:
    """Per destination: pending, dead letters, oldest pending; a short read-only look.

    Index searches only (delivered rows, kept for `trace`, are never scanned): the cost
    grows with the pending and dead rows of these destinations.
    """
    path = root / QUEUE_DB
    if not path.exists() or not destinations:
        return {}
    marks = ",".join("?" * len(destinations))
    # Read-only and short-lived: a scrape never holds a lock the daemon or forwarder needs.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        counts: dict[tuple[str, str], tuple[int, int]] = {
            (r[0], r[1]): (r[2], r[3])
            for r in conn.execute(
                "SELECT destination, state, COUNT(*), MIN(id) FROM deliveries"
                f" WHERE destination IN ({marks}) AND state IN (?, ?)"
                " GROUP BY destination, state",
                [*destinations, PENDING, DEAD_LETTER],
            )
        }
        # Ids grow with enqueue order, so the lowest pending id is the oldest instance.
        oldest = [first for (_, state), (_, first) in counts.items() if state == PENDING]
        received = dict(
            conn.execute(
                "SELECT d.id, o.received_at FROM deliveries d JOIN objects o"
                f" ON o.id = d.object_id WHERE d.id IN ({','.join('?' * len(oldest))})",
                oldest,
            ).fetchall()
        )
    finally:
        conn.close()
    out = {}
    for name in destinations:
        pending, first = counts.get((name, PENDING), (0, 0))
        dead_letters = counts.get((name, DEAD_LETTER), (0, 0))[0]
        out[name] = QueueStats(pending, dead_letters, received.get(first))
    return out


def studies_stats(root: Path) -> tuple[int, float | None]:
    """Studies collecting and the first arrival (epoch s) of the oldest; a read-only look."""
    path = root / QUEUE_DB
    if not path.exists():
        return 0, None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        count, first = conn.execute(
            "SELECT COUNT(*), MIN(first_at) FROM received_units"
            " WHERE state='collecting' AND level='study'"
        ).fetchone()
    finally:
        conn.close()
    return int(count), first
