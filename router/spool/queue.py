"""The delivery queue: one spooled file per instance, one delivery per destination.

A delivery's states (the `state` column of queue.db's deliveries):

    pending --delivered()---> delivered  its file goes once no destination needs it
    pending --dead_letter()-> dead       a dead letter: kept, with its file, not due
    pending --retry_later()-> pending    not due before the time it names
    dead --requeue_dead_letters()-> pending, with a fresh attempt count

A sending delivery has no state of its own: it stays pending until its outcome is
recorded, so a crash mid-send leaves it pending and it is sent again (at least once).

Durability of `enqueue()`, before the sender gets its status: the file's data is fsync'd,
it is linked into objects/ and that folder fsync'd, then the rows are committed (FULL
sync: the WAL is fsync'd). A crash before the commit leaves an orphan file that start-up
removes (`collect_garbage`); after it, the instance is delivered at least once to every
destination.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.errors import OutOfResources
from router.spool import durable, studies
from router.spool.db import Databases

PENDING = "pending"
DELIVERED = "delivered"
DEAD_LETTER = "dead"  # the value on disk since the first spools: kept for them


@dataclass(frozen=True)
class Instance:
    """What the queue remembers of a spooled instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str = ""
    series_uid: str = ""
    calling_ae: str = ""
    series_number: int | None = None  # the order a collected unit is sent in
    instance_number: int | None = None
    rule: str = ""


@dataclass(frozen=True)
class Delivery:
    """One (instance, destination) row as the forwarder and `queue list` see it."""

    id: int
    object_id: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    received_at: float
    batch: int | None = None  # a completed unit's deliveries share one: sent together


_SELECT = (
    "SELECT d.id, d.object_id, d.destination, d.state, d.attempts, d.next_attempt_at,"
    " d.last_status, d.last_error, o.sop_instance_uid, o.sop_class_uid, o.transfer_syntax,"
    " o.received_at, d.batch FROM deliveries d JOIN objects o ON o.id = d.object_id"
)


class Queue:
    """The deliveries in queue.db and the spooled files in `objects`; thread-safe."""

    def __init__(self, db: Databases, objects: Path) -> None:
        self._db = db
        self.objects = objects
        # late: resend sends a completed unit again: its files stay until `prune`.
        self.keep_collected = False

    def path_of(self, object_id: str) -> Path:
        """The spooled file of an object."""
        return self.objects / f"{object_id}.dcm"

    def enqueue(self, source: Path, destinations: Sequence[str], instance: Instance) -> str:
        """Durably spool `source` (already fsync'd) for each destination; return its id."""
        return self.enqueue_held(source, destinations, instance, {})[0]

    def enqueue_held(
        self,
        source: Path,
        destinations: Sequence[str],
        instance: Instance,
        held: Mapping[str, str],
        late: str = "send",
    ) -> tuple[str, set[str]]:
        """`enqueue`, some deliveries held; the object's id and the levels it came late to.

        `held` maps destinations to the level (series, study) they are collected at: those
        deliveries wait for their unit (`router.spool.studies`), counted in the same
        transaction; `late` says what an instance of a completed unit does.
        """
        object_id = uuid.uuid4().hex
        target = self.path_of(object_id)
        now = time.time()
        try:
            durable.link_or_copy(source, target)
            if not os.path.samefile(source, target):
                durable.fsync_file(target)
            durable.fsync_dir(self.objects)
            with self._db.queue() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    states, late_levels = self._states(db, instance, held, late, now)
                    db.execute(
                        "INSERT INTO objects (id, sop_instance_uid, sop_class_uid,"
                        " transfer_syntax, study_uid, series_uid, calling_ae, received_at,"
                        " series_number, instance_number, rule) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            object_id,
                            instance.sop_instance_uid,
                            instance.sop_class_uid,
                            instance.transfer_syntax,
                            instance.study_uid,
                            instance.series_uid,
                            instance.calling_ae,
                            now,
                            instance.series_number,
                            instance.instance_number,
                            instance.rule,
                        ),
                    )
                    db.executemany(
                        "INSERT INTO deliveries (object_id, destination, next_attempt_at,"
                        " updated_at, state, collect) VALUES (?,?,?,?,?,?)",
                        [
                            (object_id, name, now, now, states.get(name, PENDING), held.get(name))
                            for name in destinations
                        ],
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except (OSError, sqlite3.Error) as exc:
            target.unlink(missing_ok=True)
            raise OutOfResources(f"cannot spool the instance: {exc}") from exc
        return object_id, late_levels

    @staticmethod
    def _states(
        db: sqlite3.Connection,
        instance: Instance,
        held: Mapping[str, str],
        late: str,
        now: float,
    ) -> tuple[dict[str, str], set[str]]:
        """Each collected destination's first state (held, or pending when late: send),
        and the levels whose unit was already complete."""
        if not held:
            return {}, set()
        arrival = studies.Arrival(
            instance.study_uid, instance.series_uid, instance.calling_ae, frozenset(held.values())
        )
        late_levels = studies.record_arrival(db, arrival, now, late)
        sent_alone = late == "send"
        return {
            name: PENDING if level in late_levels and sent_alone else studies.HELD
            for name, level in held.items()
        }, late_levels

    def unit_batch(
        self, destination: str, batch: int, exclude: Sequence[int] = ()
    ) -> list[Delivery]:
        """The pending deliveries of one released unit, in SeriesNumber/InstanceNumber
        order: once one is due, the whole unit goes again together (one association or
        request), its retried instances' own times notwithstanding."""
        marks = ",".join("?" * len(exclude))
        with self._db.queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE d.batch=? AND d.destination=? AND d.state=?"
                + (f" AND d.id NOT IN ({marks})" if exclude else "")
                + " ORDER BY o.series_number IS NULL, o.series_number, o.series_uid,"
                " o.instance_number IS NULL, o.instance_number, o.received_at",
                (batch, destination, PENDING, *exclude),
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def due(self, destination: str, limit: int, exclude: Sequence[int] = ()) -> list[Delivery]:
        """Pending deliveries of `destination` whose time has come, oldest first."""
        marks = ",".join("?" * len(exclude))
        with self._db.queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE d.destination=? AND d.state=? AND d.next_attempt_at<=?"
                + (f" AND d.id NOT IN ({marks})" if exclude else "")
                + " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (destination, PENDING, time.time(), *exclude, limit),
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def entries(
        self, destination: str | None = None, states: Sequence[str] = (PENDING, DEAD_LETTER)
    ) -> list[Delivery]:
        """Deliveries in the given states (for `queue list`)."""
        where, args = _where(states, destination, "d.")
        with self._db.queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE {where} ORDER BY o.received_at, d.id", args
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def of_instances(self, sops: Sequence[str], uid: str) -> list[Delivery]:
        """Deliveries of the instances `sops`, or of any in the study or series `uid`."""
        marks = ",".join("?" * len(sops))
        with self._db.queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE o.sop_instance_uid IN ({marks}) OR o.series_uid=? OR"
                " o.study_uid=? ORDER BY o.received_at, d.id",
                (*sops, uid, uid),
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def delivered(self, delivery_id: int, status: int) -> None:
        """Record a delivery as done; drop the file once no destination needs it."""
        self._finish(delivery_id, DELIVERED, status, None)

    def dead_letter(self, delivery_id: int, status: int | None, error: str) -> None:
        """Move a delivery to the dead letters (kept, with its file, for `queue retry`)."""
        self._finish(delivery_id, DEAD_LETTER, status, error)

    def retry_later(
        self, delivery_id: int, at: float, status: int | None, error: str, count: bool = True
    ) -> None:
        """Schedule another attempt; `count` False when the destination was not reached."""
        with self._db.queue() as db:
            db.execute(
                "UPDATE deliveries SET attempts=attempts+?, next_attempt_at=?,"
                " last_status=COALESCE(?, last_status), last_error=?, updated_at=?"
                " WHERE id=? AND state=?",
                (1 if count else 0, at, status, error, time.time(), delivery_id, PENDING),
            )

    def _finish(self, delivery_id: int, state: str, status: int | None, error: str | None) -> None:
        with self._db.queue() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_status=?, last_error=?,"
                " updated_at=? WHERE id=?",
                (state, status, error, time.time(), delivery_id),
            )
            if state == DELIVERED:
                self._drop_if_done(db, delivery_id)

    def _drop_if_done(self, db: sqlite3.Connection, delivery_id: int) -> None:
        keep = " AND deliveries.collect IS NULL" if self.keep_collected else ""
        row = db.execute(
            "SELECT object_id FROM deliveries WHERE id=? AND NOT EXISTS (SELECT 1 FROM deliveries"
            f" e WHERE e.object_id=deliveries.object_id AND e.state!=?){keep}",
            (delivery_id, DELIVERED),
        ).fetchone()
        if row:
            self.path_of(row[0]).unlink(missing_ok=True)

    def requeue_dead_letters(self, destination: str | None = None) -> int:
        """Dead letters back to pending with a fresh attempt count; returns how many."""
        return self._make_due((DEAD_LETTER,), destination, "state=?, attempts=0,", [PENDING])

    def requeue_dead_letter(self, delivery_id: int) -> int:
        """One dead letter back to pending with a fresh attempt count; 1, or 0 if not dead."""
        now = time.time()
        with self._db.queue() as db:
            return db.execute(
                "UPDATE deliveries SET state=?, attempts=0, next_attempt_at=?, updated_at=?"
                " WHERE id=? AND state=?",
                (PENDING, now, now, delivery_id, DEAD_LETTER),
            ).rowcount

    def due_now(self, destination: str | None = None) -> int:
        """Pending deliveries waiting for a later attempt made due now (attempts kept)."""
        return self._make_due((PENDING,), destination, later_only=True)

    def _make_due(
        self,
        states: Sequence[str],
        destination: str | None,
        also: str = "",
        args: Sequence[object] = (),
        *,
        later_only: bool = False,
    ) -> int:
        """Deliveries in `states` due now (with `later_only`, those not due yet), `also` set."""
        where, where_args = _where(states, destination)
        now = time.time()
        if later_only:
            where += " AND next_attempt_at>?"
            where_args.append(now)
        with self._db.queue() as db:
            return db.execute(
                f"UPDATE deliveries SET {also} next_attempt_at=?, updated_at=? WHERE {where}",
                [*args, now, now, *where_args],
            ).rowcount

    def kick(self, destination: str | None = None) -> None:
        """Ask the forwarder to end `destination`'s pause (every one's with None) now."""
        with self._db.queue() as db:
            db.execute(
                "INSERT INTO kicks (destination, at) VALUES (?, ?)"
                " ON CONFLICT(destination) DO UPDATE SET at=excluded.at",
                (destination or "*", time.time()),
            )

    def kicked_at(self, destination: str) -> float:
        """When `queue retry` last asked to end this destination's pause (0: never)."""
        with self._db.queue() as db:
            row = db.execute(
                "SELECT MAX(at) FROM kicks WHERE destination IN (?, '*')", (destination,)
            ).fetchone()
        return float(row[0] or 0.0)

    def purge(self, destination: str | None = None, states: Sequence[str] = (DEAD_LETTER,)) -> int:
        """Delete deliveries (dead letters by default) and files nobody needs any more."""
        where, args = _where(states, destination)
        with self._db.queue() as db:
            count = db.execute(f"DELETE FROM deliveries WHERE {where}", args).rowcount
        self.collect_garbage()
        return count

    def collect_garbage(self, grace: float = 600.0) -> int:
        """Remove spooled files no pending or dead delivery needs (after purge or a crash).

        Files younger than `grace` seconds are spared: a running daemon links a file
        before it commits its rows.
        """
        with self._db.queue() as db:
            needed = {
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT object_id FROM deliveries WHERE state!=?", (DELIVERED,)
                )
            }
        removed = 0
        cutoff = time.time() - grace
        for path in self.objects.glob("*.dcm"):
            if path.stem not in needed and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def prune(self, before: float) -> None:
        """Forget deliveries finished before `before` (epoch seconds), and their objects."""
        with self._db.queue() as db:
            db.execute("DELETE FROM deliveries WHERE state=? AND updated_at<?", (DELIVERED, before))
            db.execute(
                "DELETE FROM objects WHERE received_at<? AND id NOT IN"
                " (SELECT object_id FROM deliveries)",
                (before,),
            )

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per destination: (pending, dead letters) counts."""
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT destination, SUM(state=?), SUM(state=?) FROM deliveries"
                " GROUP BY destination",
                (PENDING, DEAD_LETTER),
            ).fetchall()
        return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}

    def _delivery(self, row: Any) -> Delivery:
        (did, oid, dest, state, attempts, nxt, status, error, sop, cls, ts, received, batch) = row
        return Delivery(
            did,
            oid,
            dest,
            state,
            attempts,
            nxt,
            status,
            error,
            self.path_of(oid),
            sop,
            cls,
            ts,
            received,
            batch,
        )


def _where(
    states: Sequence[str], destination: str | None, prefix: str = ""
) -> tuple[str, list[object]]:
    """A WHERE clause (and its arguments) for deliveries in `states`, of one destination."""
    sql = f"{prefix}state IN ({','.join('?' * len(states))})"
    args: list[object] = list(states)
    if destination:
        sql += f" AND {prefix}destination=?"
        args.append(destination)
    return sql, args
