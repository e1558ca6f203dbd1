"""The spool as one object: its folder, delivery queue and decision log (a thin facade).

The parts, each in its module: the folders and start-up recovery (`layout`), the SQLite
schemas and connections (`db`), the delivery queue and its states (`queue`), the decision
log and `trace` (`decisions`), the monitor's read-only look (`stats`), the status
page's look at what the queue did lately (`activity`) and the paused destinations
(`pauses`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from router.errors import OutOfResources
from router.spool.activity import Activity
from router.spool.commitments import Commitments
from router.spool.db import Databases
from router.spool.decisions import DecisionLog, DecisionRecord, trace
from router.spool.layout import OBJECTS
from router.spool.pauses import Pause, Pauses
from router.spool.queue import DEAD_LETTER, PENDING, Delivery, Instance, Queue
from router.spool.relays import Relays
from router.spool.studies import Units

__all__ = ["Spool"]


class Spool:
    """The spool folder and its two databases; one per process, thread-safe."""

    def __init__(self, root: Path, *, synchronous: str = "FULL") -> None:
        self.root = root
        self.objects = root / OBJECTS
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self._db = Databases(root, synchronous=synchronous)
        except (OSError, sqlite3.Error) as exc:
            raise OutOfResources(f"spool {root} unusable: {exc}") from exc
        self.queue = Queue(self._db, self.objects)
        self.decisions = DecisionLog(self._db)
        self.activity = Activity(self._db)
        self.units = Units(self._db, self.queue.path_of)
        self.commitments = Commitments(self._db)
        self.relays = Relays(self._db)  # answer: relayed, the destinations' own commitment
        self.pauses = Pauses(self._db)
        # Called after this process finished a delivery (delivered or dead-lettered): the
        # commitment timer of the forwarder decides at once instead of at its next tick.
        self.on_finished: Callable[[], None] | None = None

    def close(self) -> None:
        """Close the idle connections; borrowed ones close when given back."""
        self._db.close()

    def path_of(self, object_id: str) -> Path:
        """The spooled file of an object."""
        return self.queue.path_of(object_id)

    def enqueue(self, source: Path, destinations: Sequence[str], instance: Instance) -> str:
        """Durably spool `source` (already fsync'd) for each destination; return its id."""
        return self.queue.enqueue(source, destinations, instance)

    def due(self, destination: str, limit: int, exclude: Sequence[int] = ()) -> list[Delivery]:
        """Pending deliveries of `destination` whose time has come, oldest first."""
        return self.queue.due(destination, limit, exclude)

    def entries(
        self, destination: str | None = None, states: Sequence[str] = (PENDING, DEAD_LETTER)
    ) -> list[Delivery]:
        """Deliveries in the given states (for `queue list`)."""
        return self.queue.entries(destination, states)

    def delivered(self, delivery_id: int, status: int) -> None:
        """Record a delivery as done; drop the file once no destination needs it."""
        self.queue.delivered(delivery_id, status)
        if self.on_finished is not None:
            self.on_finished()

    def dead_letter(self, delivery_id: int, status: int | None, error: str) -> None:
        """Move a delivery to the dead letters (kept, with its file, for `queue retry`)."""
        self.queue.dead_letter(delivery_id, status, error)
        if self.on_finished is not None:
            self.on_finished()

    def retry_later(
        self, delivery_id: int, at: float, status: int | None, error: str, count: bool = True
    ) -> None:
        """Schedule another attempt; `count` False when the destination was not reached."""
        self.queue.retry_later(delivery_id, at, status, error, count)

    def requeue_dead_letters(self, destination: str | None = None) -> int:
        """Dead letters back to pending with a fresh attempt count; returns how many."""
        return self.queue.requeue_dead_letters(destination)

    def due_now(self, destination: str | None = None) -> int:
        """Pending deliveries waiting for a later attempt made due now (attempts kept)."""
        return self.queue.due_now(destination)

    def kick(self, destination: str | None = None) -> None:
        """Ask the forwarder to end `destination`'s pause (every one's with None) now."""
        self.queue.kick(destination)

    def kicked_at(self, destination: str) -> float:
        """When `queue retry` last asked to end this destination's pause (0: never)."""
        return self.queue.kicked_at(destination)

    def pause(self, destination: str, by: str) -> Pause:
        """Send nothing to `destination` until resumed (the forwarder sees it within 1 s)."""
        return self.pauses.pause(destination, by)

    def resume(self, destination: str) -> tuple[Pause | None, int]:
        """End `destination`'s pause: the pause ended (None: none) and its pending
        deliveries, all due now (a backoff in progress ends too)."""
        ended = self.pauses.resume(destination)
        self.queue.due_now(destination)
        self.queue.kick(destination)
        return ended, self.queue.depth().get(destination, (0, 0))[0]

    def purge(self, destination: str | None = None, states: Sequence[str] = (DEAD_LETTER,)) -> int:
        """Delete deliveries (dead letters by default) and files nobody needs any more."""
        return self.queue.purge(destination, states)

    def collect_garbage(self, grace: float = 600.0) -> int:
        """Remove spooled files no pending or dead delivery needs; spare those below `grace` s."""
        return self.queue.collect_garbage(grace)

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per destination: (pending, dead letters) counts."""
        return self.queue.depth()

    def prune(self, before: float) -> None:
        """Forget deliveries, completed units and decisions older than `before` (epoch s)."""
        self.queue.prune(before)
        self.units.prune(before)
        self.decisions.prune(before)

    def record_many(self, recs: Sequence[DecisionRecord]) -> None:
        """Append C-STOREs to the decision log, in one transaction."""
        self.decisions.record_many(recs)

    def trace(self, uid: str) -> tuple[list[DecisionRecord], list[Delivery]]:
        """Decisions and deliveries of every instance of a study, series or instance UID."""
        return trace(self.decisions, self.queue, uid)
