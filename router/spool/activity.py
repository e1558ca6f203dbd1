"""What the queue did lately, as the status page shows it: finished counts and failures.

Bounded reads: the counts look at the newest `scan` deliveries only (ids grow with
enqueue order), so a large spool costs a page no more than that.
"""

from __future__ import annotations

from router.spool.db import Databases
from router.spool.queue import DEAD_LETTER, DELIVERED, PENDING


class Activity:
    """Read-only looks at queue.db's deliveries for the status page; thread-safe."""

    def __init__(self, db: Databases) -> None:
        self._db = db

    def finished_since(self, since: float, scan: int) -> dict[tuple[str, str], int]:
        """(destination, 'delivered' or 'dead-letter') -> count finished after `since`,
        among the newest `scan` deliveries."""
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT destination, state, COUNT(*) FROM deliveries WHERE id >"
                " (SELECT COALESCE(MAX(id), 0) FROM deliveries) - ? AND updated_at>?"
                " AND state IN (?, ?) GROUP BY destination, state",
                (scan, since, DELIVERED, DEAD_LETTER),
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def failing(self) -> dict[str, tuple[float, float, str]]:
        """destination -> (failing since, next attempt, last error) of its pending
        deliveries that carry an error."""
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT destination, MIN(updated_at), MAX(next_attempt_at), last_error"
                " FROM deliveries WHERE state=? AND last_error IS NOT NULL"
                " GROUP BY destination",
                (PENDING,),
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}
