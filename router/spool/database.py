"""The spool: durable instance files, per-destination delivery queues, the decision log.

Layout under the spool folder:
    incoming/     partial receives (pynetdicom's temporary files); cleared at start-up
    work/         `modify` outputs while a C-STORE is handled; cleared at start-up
    placing/      links to store destinations' temporary names; removed at start-up
    objects/      one file per queued instance, however many destinations want it
    queue.db      SQLite (WAL, synchronous=FULL): objects and deliveries
    decisions.db  SQLite (WAL): one row per C-STORE, read by `trace`
    metrics/      per-process Prometheus files when `metrics` is on (router.observe.metrics)

Durability of `enqueue()`, before the sender gets its status: the file's data is fsync'd,
it is linked into objects/ and that folder fsync'd, then the rows are committed (FULL
sync: the WAL is fsync'd). A crash before the commit leaves an orphan file that start-up
removes; after it, the instance is delivered at least once to every destination.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.errors import OutOfResources
from router.spool import durable as store

_QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    object_id TEXT NOT NULL REFERENCES objects(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_object ON deliveries (object_id);
CREATE INDEX IF NOT EXISTS objects_uid ON objects (sop_instance_uid);
"""

_DECISION_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    rule TEXT NOT NULL,
    actions TEXT NOT NULL,
    status INTEGER NOT NULL,
    comment TEXT,
    config_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_sop ON decisions (sop_instance_uid);
CREATE INDEX IF NOT EXISTS decisions_series ON decisions (series_uid);
CREATE INDEX IF NOT EXISTS decisions_study ON decisions (study_uid);
"""


@dataclass(frozen=True)
class Instance:
    """What the queue remembers of a spooled instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str = ""
    series_uid: str = ""
    calling_ae: str = ""


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


@dataclass(frozen=True)
class DecisionRecord:
    """One C-STORE as the decision log keeps it."""

    at: float
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    rule: str
    actions: str
    status: int
    comment: str | None
    config_version: str


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


IDLE_CONNECTIONS = 4  # per database: enough for the SCP's and the forwarder's threads


class Spool:
    """The spool folder and its two databases; one per process, thread-safe."""

    def __init__(self, root: Path, *, synchronous: str = "FULL") -> None:
        self.root = root
        self._synchronous = synchronous
        self.objects = root / "objects"
        self._lock = threading.Lock()
        self._idle: dict[str, list[sqlite3.Connection]] = {}
        self._closed = False
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            with self._queue() as db:
                db.executescript(_QUEUE_SCHEMA)
            with self._decisions() as db:
                db.executescript(_DECISION_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutOfResources(f"spool {root} unusable: {exc}") from exc

    # sqlite3 objects must not be used by two threads at once: each `with` block borrows
    # a connection from a small pool and gives it back, so an association's thread holds
    # none once its C-STORE is answered, and at most IDLE_CONNECTIONS wait idle per db.
    @contextmanager
    def _queue(self) -> Iterator[sqlite3.Connection]:
        with self._borrow("queue.db", self._synchronous) as conn:
            yield conn

    @contextmanager
    def _decisions(self) -> Iterator[sqlite3.Connection]:
        # A lost log line on power loss is acceptable; the queue's rows are not.
        with self._borrow("decisions.db", "NORMAL") as conn:
            yield conn

    @contextmanager
    def _borrow(self, name: str, synchronous: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            conn = idle.pop() if idle else None
        if conn is None:
            conn = _connect(self.root / name, synchronous)
        try:
            yield conn
        finally:
            with self._lock:
                idle = self._idle.setdefault(name, [])
                keep = not self._closed and len(idle) < IDLE_CONNECTIONS
                if keep:
                    idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close the idle connections; borrowed ones close when given back."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def path_of(self, object_id: str) -> Path:
        """The spooled file of an object."""
        return self.objects / f"{object_id}.dcm"

    def enqueue(self, source: Path, destinations: Sequence[str], instance: Instance) -> str:
        """Durably spool `source` (already fsync'd) for each destination; return its id."""
        object_id = uuid.uuid4().hex
        target = self.path_of(object_id)
        now = time.time()
        try:
            store.link_or_copy(source, target)
            if not os.path.samefile(source, target):
                store.fsync_file(target)
            store.fsync_dir(self.objects)
            with self._queue() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?)",
                        (
                            object_id,
                            instance.sop_instance_uid,
                            instance.sop_class_uid,
                            instance.transfer_syntax,
                            instance.study_uid,
                            instance.series_uid,
                            instance.calling_ae,
                            now,
                        ),
                    )
                    db.executemany(
                        "INSERT INTO deliveries (object_id, destination, next_attempt_at,"
                        " updated_at) VALUES (?,?,?,?)",
                        [(object_id, name, now, now) for name in destinations],
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except (OSError, sqlite3.Error) as exc:
            target.unlink(missing_ok=True)
            raise OutOfResources(f"cannot spool the instance: {exc}") from exc
        return object_id

    def due(self, destination: str, limit: int, exclude: Sequence[int] = ()) -> list[Delivery]:
        """Pending deliveries of `destination` whose time has come, oldest first."""
        marks = ",".join("?" * len(exclude))
        with self._queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE d.destination=? AND d.state='pending' AND d.next_attempt_at<=?"
                + (f" AND d.id NOT IN ({marks})" if exclude else "")
                + " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (destination, time.time(), *exclude, limit),
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def entries(
        self,
        destination: str | None = None,
        states: Sequence[str] = ("pending", "dead"),
    ) -> list[Delivery]:
        """Deliveries in the given states (for `queue list`)."""
        where, args = _where(states, destination, "d.")
        with self._queue() as db:
            rows = db.execute(
                f"{_SELECT} WHERE {where} ORDER BY o.received_at, d.id", args
            ).fetchall()
        return [self._delivery(r) for r in rows]

    def delivered(self, delivery_id: int, status: int) -> None:
        """Record a delivery as done; drop the file once no destination needs it."""
        self._finish(delivery_id, "delivered", status, None)

    def dead(self, delivery_id: int, status: int | None, error: str) -> None:
        """Move a delivery to the dead letters (kept, with its file, for `queue retry`)."""
        self._finish(delivery_id, "dead", status, error)

    def retry_later(
        self, delivery_id: int, at: float, status: int | None, error: str, count: bool = True
    ) -> None:
        """Schedule another attempt; `count` False when the destination was not reached."""
        with self._queue() as db:
            db.execute(
                "UPDATE deliveries SET attempts=attempts+?, next_attempt_at=?,"
                " last_status=COALESCE(?, last_status), last_error=?, updated_at=?"
                " WHERE id=? AND state='pending'",
                (1 if count else 0, at, status, error, time.time(), delivery_id),
            )

    def _finish(self, delivery_id: int, state: str, status: int | None, error: str | None) -> None:
        with self._queue() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_status=?, last_error=?,"
                " updated_at=? WHERE id=?",
                (state, status, error, time.time(), delivery_id),
            )
            if state == "delivered":
                self._drop_if_done(db, delivery_id)

    def _drop_if_done(self, db: sqlite3.Connection, delivery_id: int) -> None:
        row = db.execute(
            "SELECT object_id FROM deliveries WHERE id=? AND NOT EXISTS (SELECT 1 FROM deliveries"
            " e WHERE e.object_id=deliveries.object_id AND e.state!='delivered')",
            (delivery_id,),
        ).fetchone()
        if row:
            self.path_of(row[0]).unlink(missing_ok=True)

    def requeue_dead(self, destination: str | None = None) -> int:
        """Dead letters back to pending with a fresh attempt count; returns how many."""
        where, args = _where(("dead",), destination)
        now = time.time()
        with self._queue() as db:
            return db.execute(
                "UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?,"
                f" updated_at=? WHERE {where}",
                [now, now, *args],
            ).rowcount

    def purge(self, destination: str | None = None, states: Sequence[str] = ("dead",)) -> int:
        """Delete deliveries (dead letters by default) and files nobody needs any more."""
        where, args = _where(states, destination)
        with self._queue() as db:
            count = db.execute(f"DELETE FROM deliveries WHERE {where}", args).rowcount
        self.collect_garbage()
        return count

    def collect_garbage(self, grace: float = 600.0) -> int:
        """Remove spooled files no pending or dead delivery needs (after purge or a crash).

        Files younger than `grace` seconds are spared: a running daemon links a file
        before it commits its rows.
        """
        with self._queue() as db:
            needed = {
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT object_id FROM deliveries WHERE state!='delivered'"
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
        with self._queue() as db:
            db.execute("DELETE FROM deliveries WHERE state='delivered' AND updated_at<?", (before,))
            db.execute(
                "DELETE FROM objects WHERE received_at<? AND id NOT IN"
                " (SELECT object_id FROM deliveries)",
                (before,),
            )
        with self._decisions() as db:
            db.execute("DELETE FROM decisions WHERE at<?", (before,))

    def record(self, rec: DecisionRecord) -> None:
        """Append one C-STORE to the decision log."""
        self.record_many([rec])

    def record_many(self, recs: Sequence[DecisionRecord]) -> None:
        """Append C-STOREs to the decision log, in one transaction."""
        with self._decisions() as db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO decisions (at, sop_instance_uid, series_uid, study_uid,"
                " sop_class_uid, calling_ae, called_ae, peer, rule, actions, status, comment,"
                " config_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        rec.at,
                        rec.sop_instance_uid,
                        rec.series_uid,
                        rec.study_uid,
                        rec.sop_class_uid,
                        rec.calling_ae,
                        rec.called_ae,
                        rec.peer,
                        rec.rule,
                        rec.actions,
                        rec.status,
                        rec.comment,
                        rec.config_version,
                    )
                    for rec in recs
                ],
            )
            db.execute("COMMIT")

    def trace(self, uid: str) -> tuple[list[DecisionRecord], list[Delivery]]:
        """Decisions and deliveries of every instance of a study, series or instance UID."""
        with self._decisions() as db:
            rows = db.execute(
                "SELECT at, sop_instance_uid, series_uid, study_uid, sop_class_uid, calling_ae,"
                " called_ae, peer, rule, actions, status, comment, config_version FROM decisions"
                " WHERE sop_instance_uid=?1 OR series_uid=?1 OR study_uid=?1 ORDER BY at, id",
                (uid,),
            ).fetchall()
        decisions = [DecisionRecord(*r) for r in rows]
        sops = sorted({d.sop_instance_uid for d in decisions} | {uid})
        marks = ",".join("?" * len(sops))
        with self._queue() as db:
            found = db.execute(
                f"{_SELECT} WHERE o.sop_instance_uid IN ({marks}) OR o.series_uid=? OR"
                " o.study_uid=? ORDER BY o.received_at, d.id",
                (*sops, uid, uid),
            ).fetchall()
        return decisions, [self._delivery(r) for r in found]

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per destination: (pending, dead) counts."""
        with self._queue() as db:
            rows = db.execute(
                "SELECT destination, SUM(state='pending'), SUM(state='dead') FROM deliveries"
                " GROUP BY destination"
            ).fetchall()
        return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}

    def _delivery(self, row: Any) -> Delivery:
        (did, oid, dest, state, attempts, nxt, status, error, sop, cls, ts, received) = row
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


_SELECT = (
    "SELECT d.id, d.object_id, d.destination, d.state, d.attempts, d.next_attempt_at,"
    " d.last_status, d.last_error, o.sop_instance_uid, o.sop_class_uid, o.transfer_syntax,"
    " o.received_at FROM deliveries d JOIN objects o ON o.id = d.object_id"
)


@dataclass(frozen=True)
class QueueStats:
    """One destination's queue as a monitor sees it."""

    pending: int = 0
    dead: int = 0
    oldest_pending: float | None = None  # received_at (epoch s) of the oldest pending


def queue_stats(root: Path, destinations: Sequence[str]) -> dict[str, QueueStats]:
    """Per destination: pending, dead letters, oldest pending; a short read-only look.

    Index searches only (delivered rows, kept for `trace`, are never scanned): the cost
    grows with the pending and dead rows of these destinations.
    """
    path = root / "queue.db"
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
                f" WHERE destination IN ({marks}) AND state IN ('pending', 'dead')"
                " GROUP BY destination, state",
                list(destinations),
            )
        }
        # Ids grow with enqueue order, so the lowest pending id is the oldest instance.
        oldest = [first for (_, state), (_, first) in counts.items() if state == "pending"]
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
        pending, first = counts.get((name, "pending"), (0, 0))
        out[name] = QueueStats(pending, counts.get((name, "dead"), (0, 0))[0], received.get(first))
    return out
