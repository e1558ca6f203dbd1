"""Studies and series as received: queue.db's `received_units`, and the held deliveries
they release when complete.

A unit is a study or a series (`level`, `uid`). Every receiving worker records each
instance it spools for a collecting action in the same transaction as the instance's
rows (`record_arrival`), so the state is shared by all workers and survives any kill.
One timer (the forwarder's `router.destinations.sweeper`) completes units after the quiet
time or `max_wait` (`due_units`, `complete`); `studies complete UID` forces one.

Completing a unit turns its held deliveries into pending ones that share a `batch`
number, which the destination's worker sends together (one association, one POST).
The table holds what any feature needs to know of a study or series as received (first
and last arrival, count, calling AE, state); it is not specific to forwarding.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from router.spool.db import Databases

COLLECTING = "collecting"
FORCING = "forcing"  # `studies complete` asked; the sweeper completes it (reason forced)
COMPLETE = "complete"
HELD = "held"  # a delivery's state until its unit is complete (router.spool.queue)
LEVELS = ("series", "study")
REASONS = ("quiet", "released", "max_wait", "forced")


@dataclass(frozen=True)
class Unit:
    """One study or series as received."""

    level: str
    uid: str
    study_uid: str
    calling_ae: str
    first_at: float
    last_at: float
    count: int
    late: int
    state: str
    reason: str | None
    completed_at: float | None
    held: int = 0  # deliveries still held for it


@dataclass(frozen=True)
class Arrival:
    """What one spooled instance means for its units: the levels it is collected at."""

    study_uid: str
    series_uid: str
    calling_ae: str
    levels: frozenset[str]


# The held deliveries of one unit (collect level, UID), found through the partial index
# deliveries_held: the state is written out so that SQLite can use it, and objects are
# looked up by their key (no index on objects' study or series UID on the hot path).
_HELD_OF = "state = 'held' AND collect=? AND (SELECT {column} FROM objects WHERE id=object_id)=?"

_COLUMNS = (
    "level, uid, study_uid, calling_ae, first_at, last_at, count, late, state, reason, completed_at"
)


def record_arrival(db: sqlite3.Connection, arrival: Arrival, now: float, late: str) -> set[str]:
    """Count the instance in its study and series (inside the caller's transaction).

    Returns the levels whose unit was already complete: the instance is late there.
    With `late: resend` such a unit is collecting again; otherwise it stays complete.
    """
    late_levels = set()
    for level in LEVELS:
        uid = arrival.series_uid if level == "series" else arrival.study_uid
        row = db.execute(
            "SELECT state FROM received_units WHERE level=? AND uid=?", (level, uid)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO received_units (level, uid, study_uid, calling_ae, first_at,"
                " last_at, count) VALUES (?,?,?,?,?,?,1)",
                (level, uid, arrival.study_uid, arrival.calling_ae, now, now),
            )
            continue
        is_late = row[0] == COMPLETE and level in arrival.levels
        reopen = is_late and late == "resend"
        if is_late:
            late_levels.add(level)
        db.execute(
            "UPDATE received_units SET last_at=?, count=count+1, late=late+?,"
            " state=CASE WHEN ? THEN 'collecting' ELSE state END,"
            " first_at=CASE WHEN ? THEN ? ELSE first_at END"
            " WHERE level=? AND uid=?",
            (now, int(is_late), reopen, reopen, now, level, uid),
        )
    return late_levels


def due_units(db: sqlite3.Connection, quiet: float, max_wait: float, now: float) -> list[Unit]:
    """Collecting units whose quiet time or max_wait has passed, and those forced."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM received_units WHERE (state=? AND (last_at<=? OR first_at<=?))"
        " OR state=?",
        (COLLECTING, now - quiet, now - max_wait, FORCING),
    ).fetchall()
    return [Unit(*r) for r in rows]


def delivered_of(db: sqlite3.Connection, level: str, uid: str) -> list[tuple[int, str]]:
    """(delivery id, object id) of a unit's collected deliveries already delivered."""
    column = "series_uid" if level == "series" else "study_uid"
    return [
        (int(r[0]), str(r[1]))
        for r in db.execute(
            "SELECT id, object_id FROM deliveries WHERE batch IS NOT NULL AND collect=?"
            f" AND state='delivered' AND (SELECT {column} FROM objects WHERE id=object_id)=?",
            (level, uid),
        )
    ]


def complete(
    db: sqlite3.Connection,
    level: str,
    uid: str,
    reason: str,
    now: float,
    again: Iterable[int] = (),
) -> int:
    """Mark a unit complete and release its held deliveries as one batch; how many.

    `again`: delivered deliveries of the unit sent once more with it (late: resend).
    Runs in its own transaction.
    """
    column = "series_uid" if level == "series" else "study_uid"
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "UPDATE received_units SET state=?, reason=?, completed_at=? WHERE level=? AND uid=?",
            (COMPLETE, reason, now, level, uid),
        )
        batch = db.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM deliveries").fetchone()[0]
        released = db.execute(
            "UPDATE deliveries SET state='pending', batch=?, next_attempt_at=?, updated_at=?"
            f" WHERE {_HELD_OF.format(column=column)}",
            (batch, now, now, level, uid),
        ).rowcount
        for delivery_id in again:
            released += db.execute(
                "UPDATE deliveries SET state='pending', batch=?, attempts=0, next_attempt_at=?,"
                " updated_at=? WHERE id=? AND state='delivered'",
                (batch, now, now, delivery_id),
            ).rowcount
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(released)


def units_of(db: sqlite3.Connection, uid: str) -> list[Unit]:
    """The study `uid` and its series, or the series `uid`, with their held deliveries."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM received_units WHERE uid=? OR study_uid=? ORDER BY first_at",
        (uid, uid),
    ).fetchall()
    return [_with_held(db, Unit(*r)) for r in rows]


def listing(db: sqlite3.Connection, states: Iterable[str] = (COLLECTING,)) -> list[Unit]:
    """Units in `states`, oldest first, with their held deliveries."""
    wanted = list(states)
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM received_units WHERE state IN ({','.join('?' * len(wanted))})"
        " ORDER BY first_at",
        wanted,
    ).fetchall()
    return [_with_held(db, Unit(*r)) for r in rows]


def _with_held(db: sqlite3.Connection, unit: Unit) -> Unit:
    column = "series_uid" if unit.level == "series" else "study_uid"
    held = db.execute(
        f"SELECT COUNT(*) FROM deliveries WHERE {_HELD_OF.format(column=column)}",
        (unit.level, unit.uid),
    ).fetchone()[0]
    return replace(unit, held=int(held))


def collecting_summary(db: sqlite3.Connection, now: float) -> Mapping[str, float]:
    """Studies collecting and the oldest one's age in seconds (for metrics)."""
    count, first = db.execute(
        "SELECT COUNT(*), MIN(first_at) FROM received_units WHERE level='study' AND state=?",
        (COLLECTING,),
    ).fetchone()
    return {"collecting": float(count), "oldest_age": (now - first) if first else 0.0}


def now() -> float:
    """The clock the units are kept in (epoch seconds)."""
    return time.time()


class Units:
    """The received units of one spool, with its connections; thread-safe."""

    def __init__(self, db: Databases, path_of: Callable[[str], Path]) -> None:
        self._db = db
        self._path_of = path_of

    def due(self, quiet: float, max_wait: float) -> list[Unit]:
        """Collecting units whose quiet time or max_wait has passed."""
        with self._db.queue() as db:
            return due_units(db, quiet, max_wait, now())

    def complete(self, level: str, uid: str, reason: str, resend: bool = False) -> int:
        """Complete one unit and release its held deliveries (again the delivered ones
        whose file is kept, with `resend`); how many deliveries were released."""
        with self._db.queue() as db:
            again = (
                [d for d, oid in delivered_of(db, level, uid) if self._path_of(oid).exists()]
                if resend
                else []
            )
            return complete(db, level, uid, reason, now(), again)

    def force(self, units: Iterable[Unit]) -> None:
        """Ask the sweeper to complete these units at its next tick (reason forced)."""
        with self._db.queue() as db:
            db.executemany(
                "UPDATE received_units SET state=? WHERE level=? AND uid=?",
                [(FORCING, u.level, u.uid) for u in units],
            )

    def prune(self, before: float) -> None:
        """Forget the units completed before `before` that hold nothing any more."""
        with self._db.queue() as db:
            db.execute(
                "DELETE FROM received_units WHERE state=? AND completed_at<? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries WHERE state = 'held' AND collect=level AND"
                " (SELECT CASE level WHEN 'series' THEN series_uid ELSE study_uid END"
                " FROM objects WHERE id=object_id)=uid)",
                (COMPLETE, before),
            )

    def of(self, uid: str) -> list[Unit]:
        """A study and its series, or one series."""
        with self._db.queue() as db:
            return units_of(db, uid)

    def listing(self, states: Iterable[str] = (COLLECTING,)) -> list[Unit]:
        """Units in `states`, oldest first."""
        with self._db.queue() as db:
            return listing(db, states)

    def objects_of(self, level: str, uid: str) -> list[tuple[str, str, str, str, float]]:
        """(object id, SOP instance, SOP class, series UID, received at) of a unit's objects."""
        column = "series_uid" if level == "series" else "study_uid"
        with self._db.queue() as db:
            return [
                (str(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]))
                for r in db.execute(
                    "SELECT id, sop_instance_uid, sop_class_uid, series_uid, received_at"
                    f" FROM objects WHERE {column}=? ORDER BY received_at",
                    (uid,),
                )
            ]

    def deliveries_of(self, delivery_ids: Iterable[int]) -> list[Collected]:
        """What a notification says about each of these deliveries' instances."""
        ids = list(delivery_ids)
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT d.collect, o.study_uid, o.series_uid, o.sop_class_uid, o.calling_ae,"
                " o.received_at, o.rule, o.id FROM deliveries d JOIN objects o"
                f" ON o.id = d.object_id WHERE d.id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        return [Collected(*r) for r in rows]

    def unit(self, level: str, uid: str) -> Unit | None:
        """One unit, None when unknown."""
        with self._db.queue() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM received_units WHERE level=? AND uid=?", (level, uid)
            ).fetchone()
        return Unit(*row) if row else None


@dataclass(frozen=True)
class Collected:
    """One collected delivery's instance as a notification describes it."""

    level: str | None
    study_uid: str
    series_uid: str
    sop_class_uid: str
    calling_ae: str
    received_at: float
    rule: str
    object_id: str
