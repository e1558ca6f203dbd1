"""Destinations an administrator paused (`queue pause`, the status page's Pause button).

The rows live in queue.db, so the forwarder (another process) sees them and they survive
a restart; each worker reads its destination's row at most once a second (`worker`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from router.spool.db import Databases


@dataclass(frozen=True)
class Pause:
    """Who paused a destination, and when (epoch s)."""

    by: str
    at: float


class Pauses:
    """The `paused` table of queue.db; thread-safe."""

    def __init__(self, db: Databases) -> None:
        self._db = db

    def pause(self, destination: str, by: str) -> Pause:
        """Pause `destination` (a pause in force is kept, with its author and time)."""
        with self._db.queue() as db:
            db.execute(
                "INSERT INTO paused (destination, by, at) VALUES (?, ?, ?)"
                " ON CONFLICT(destination) DO NOTHING",
                (destination, by, time.time()),
            )
        found = self.of(destination)
        assert found is not None  # just written, and only `resume` deletes it
        return found

    def resume(self, destination: str) -> Pause | None:
        """End `destination`'s pause; the pause it ended (None: it was not paused)."""
        with self._db.queue() as db:
            row = db.execute(
                "DELETE FROM paused WHERE destination=? RETURNING by, at", (destination,)
            ).fetchone()
        return Pause(row[0], float(row[1])) if row else None

    def of(self, destination: str) -> Pause | None:
        """The pause of `destination`, None when it sends."""
        with self._db.queue() as db:
            row = db.execute(
                "SELECT by, at FROM paused WHERE destination=?", (destination,)
            ).fetchone()
        return Pause(row[0], float(row[1])) if row else None

    def listing(self) -> dict[str, Pause]:
        """Every paused destination."""
        with self._db.queue() as db:
            rows = db.execute("SELECT destination, by, at FROM paused").fetchall()
        return {r[0]: Pause(r[1], float(r[2])) for r in rows}
