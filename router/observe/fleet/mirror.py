"""The fleet mirror: one thread of the forwarder process copies the spool to PostgreSQL.

Why a thread of the forwarder: it is one process per node (so one writer per node and
no second copy of the work in each receiving worker), it already opens the spool, gets
every new config and is restarted if it dies, and it is not the process that answers
C-STOREs: a slow PostgreSQL (its waits release the GIL) costs the receivers nothing.

Every round reads at most `batch` rows of each kind from SQLite and writes them, the
queue figures, this node's marks (what was mirrored up to) and its heartbeat in ONE
PostgreSQL transaction; the marks live there (`nodes`), not in the local schema. Upserts
make a repeated batch harmless. Nothing is queued in memory: a PostgreSQL that is down
only leaves rows behind in SQLite, and the next round starts from the marks again.
Connecting and every statement are bounded by `fleet.timeout`.

Decisions are read by id (SQLite gives a later commit a higher id). Deliveries change
state, so they are read by (updated_at, id); a row's updated_at is taken just before
its write, so a slower writer could still commit an earlier time than a row already
read: the stored cursor stays SETTLE seconds behind, and the last SETTLE seconds of rows
are sent again next round (an idempotent upsert). A row that changes again later (a
retry, `queue retry`) gets a new updated_at and is sent again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.config.fleet import Fleet, read_dsn
from router.observe import metrics
from router.observe.fleet import status
from router.observe.fleet.schema import migrate
from router.observe.instruments import queued_destinations
from router.rules.ruleset import LoadedConfig
from router.spool.db import DECISIONS_DB, QUEUE_DB
from router.spool.stats import queue_stats

log = logging.getLogger("router.fleet")

SETTLE = 1.0  # seconds the deliveries cursor stays behind now (see the module doc)

_DECISIONS = (
    "SELECT id, at, sop_instance_uid, series_uid, study_uid, sop_class_uid, calling_ae,"
    " called_ae, peer, rule, actions, status, comment, config_version FROM decisions"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
_DELIVERIES_AFTER = "(d.updated_at > ?1 OR (d.updated_at = ?1 AND d.id > ?2))"
_DELIVERIES = (
    "SELECT d.id, COALESCE(o.sop_instance_uid, ''), COALESCE(o.series_uid, ''),"
    " COALESCE(o.study_uid, ''), d.destination, d.state, d.attempts, d.last_status,"
    " d.last_error, o.received_at, d.updated_at FROM deliveries d"
    f" LEFT JOIN objects o ON o.id = d.object_id WHERE {_DELIVERIES_AFTER}"
    " ORDER BY d.updated_at, d.id LIMIT ?3"
)
_PUT_DECISIONS = (
    "INSERT INTO decisions (node, id, at, sop_instance_uid, series_uid, study_uid,"
    " sop_class_uid, calling_ae, called_ae, peer, rule, actions, status, comment,"
    " config_version) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (node, id) DO NOTHING"
)
_PUT_DELIVERIES = (
    "INSERT INTO deliveries (node, id, sop_instance_uid, series_uid, study_uid, destination,"
    " state, attempts, last_status, last_error, received_at, updated_at)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (node, id) DO UPDATE SET"
    " state=EXCLUDED.state, attempts=EXCLUDED.attempts, last_status=EXCLUDED.last_status,"
    " last_error=EXCLUDED.last_error, updated_at=EXCLUDED.updated_at"
)


@dataclass
class Marks:
    """What this node has mirrored up to (kept in PostgreSQL's `nodes` row)."""

    decision_id: int = 0
    delivery_at: float = 0.0
    delivery_id: int = 0
    # The newest delivery (updated_at, id) sent, settled or not: what the lag counts from.
    sent: tuple[float, int] = (0.0, 0)


class Mirror:
    """The mirror thread of one node; `stop()` ends it."""

    def __init__(self, loaded: LoadedConfig) -> None:
        assert loaded.config.fleet is not None
        self.fleet: Fleet = loaded.config.fleet
        self._loaded = loaded
        self._root = loaded.spool
        self._marks = Marks()  # until read from PostgreSQL: nothing mirrored
        self._reread = True  # read the marks from PostgreSQL at the next connection
        self._pool: Any = None
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-mirror", daemon=True)

    def start(self) -> None:
        """Start mirroring."""
        self._thread.start()

    def apply(self, loaded: LoadedConfig) -> None:
        """A new config with the same `fleet:` section (destinations may have changed)."""
        self._loaded = loaded

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread after its current statement (each is bounded by fleet.timeout)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.close(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one_pass()
            self._stop.wait(self.fleet.interval)

    def _one_pass(self) -> None:
        """Catch up as far as PostgreSQL lets us, then publish the lag."""
        import psycopg
        from psycopg_pool import PoolTimeout

        error = None
        try:
            pool = self._pool or self._open_pool()
            with pool.connection(timeout=self.fleet.timeout) as conn:
                if self._reread:
                    migrate(conn)
                    self._marks = self._read_marks(conn)
                    self._reread = False
                while not self._stop.is_set() and self._send_batch(conn, self._marks):
                    pass
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            self._reread = True  # the last commit may or may not have happened
        except sqlite3.Error as exc:
            error = f"spool: {exc}"
        self._report(error)

    def _open_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        timeout = round(self.fleet.timeout)
        self._pool = ConnectionPool(
            read_dsn(self.fleet, self._loaded.base_dir),
            min_size=1,
            max_size=1,
            open=False,
            timeout=self.fleet.timeout,
            # A failed connection is retried from scratch at the next round, not after a
            # backoff of minutes: the mirror must catch up soon after PostgreSQL is back.
            reconnect_timeout=self.fleet.timeout,
            reconnect_failed=lambda _pool: None,
            check=_check,
            name="fleet",
            kwargs={
                "connect_timeout": timeout,
                "options": f"-c statement_timeout={timeout * 1000}",
                "application_name": f"dicom-router {self.fleet.node}",
                "autocommit": True,
                # A box that vanishes (cable, power) is noticed within about the timeout.
                "keepalives": 1,
                "keepalives_idle": timeout,
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": timeout * 1000,
            },
        )
        self._pool.open(wait=False)
        return self._pool

    def _read_marks(self, conn: Any) -> Marks:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO nodes (node) VALUES (%s) ON CONFLICT (node) DO NOTHING",
                (self.fleet.node,),
            )
            cur.execute(
                "SELECT decisions_upto, deliveries_upto_at, deliveries_upto_id FROM nodes"
                " WHERE node=%s",
                (self.fleet.node,),
            )
            row = cur.fetchone()
        return Marks(int(row[0]), float(row[1]), int(row[2]))

    def _send_batch(self, conn: Any, marks: Marks) -> bool:
        """One transaction: a batch of each kind, queue figures, marks, heartbeat.

        True when a kind filled its batch (more may wait).
        """
        node, batch = self.fleet.node, self.fleet.batch
        with closing(_ro(self._root / DECISIONS_DB)) as db:
            decisions = db.execute(_DECISIONS, (marks.decision_id, batch)).fetchall()
        with closing(_ro(self._root / QUEUE_DB)) as db:
            deliveries = db.execute(
                _DELIVERIES,
                (marks.delivery_at, marks.delivery_id, batch),
            ).fetchall()
        names = queued_destinations(self._loaded.config)
        figures = queue_stats(self._root, names)
        # The cursor stays SETTLE s behind now (see the module doc): the newest rows are
        # sent now and sent again next round, an upsert that changes nothing.
        horizon = time.time() - SETTLE
        settled = [r for r in deliveries if r[-1] <= horizon]
        new = Marks(
            decisions[-1][0] if decisions else marks.decision_id,
            settled[-1][-1] if settled else marks.delivery_at,
            settled[-1][0] if settled else marks.delivery_id,
        )
        sent = (deliveries[-1][-1], deliveries[-1][0]) if deliveries else marks.sent
        new.sent = max(sent, (new.delivery_at, new.delivery_id))
        with conn.transaction(), conn.cursor() as cur:
            if decisions:
                cur.executemany(_PUT_DECISIONS, [(node, *r) for r in decisions])
            if deliveries:
                cur.executemany(_PUT_DELIVERIES, [(node, *r) for r in deliveries])
            cur.execute("DELETE FROM queues WHERE node=%s", (node,))
            cur.executemany(
                "INSERT INTO queues (node, destination, pending, dead_letters, oldest_pending)"
                " VALUES (%s,%s,%s,%s,%s)",
                [
                    (node, n, q.pending, q.dead_letters, q.oldest_pending)
                    for n, q in figures.items()
                ],
            )
            rows, seconds = self._lag(new)
            cur.execute(
                "UPDATE nodes SET last_mirror=now(), decisions_upto=%s, deliveries_upto_at=%s,"
                " deliveries_upto_id=%s, lag_rows=%s, lag_seconds=%s, config_version=%s"
                " WHERE node=%s",
                (
                    new.decision_id,
                    new.delivery_at,
                    new.delivery_id,
                    rows,
                    seconds,
                    self._loaded.version,
                    node,
                ),
            )
        progress = (new.delivery_at, new.delivery_id) != (marks.delivery_at, marks.delivery_id)
        marks.__dict__.update(new.__dict__)
        return len(decisions) == batch or (len(deliveries) == batch and progress)

    def _lag(self, marks: Marks) -> tuple[int, float]:
        """Rows not mirrored yet, and the age of the oldest of them (0 when none)."""
        with closing(_ro(self._root / DECISIONS_DB)) as db:
            d_rows, d_first = db.execute(
                "SELECT COUNT(*), MIN(at) FROM decisions WHERE id > ?", (marks.decision_id,)
            ).fetchone()
        with closing(_ro(self._root / QUEUE_DB)) as db:
            q_rows, q_first = db.execute(
                f"SELECT COUNT(*), MIN(d.updated_at) FROM deliveries d WHERE {_DELIVERIES_AFTER}",
                marks.sent,
            ).fetchone()
        firsts = [t for t in (d_first, q_first) if t is not None]
        return d_rows + q_rows, max(0.0, time.time() - min(firsts)) if firsts else 0.0

    def _report(self, error: str | None) -> None:
        """Log an outage once and its end once; publish the lag (metric, /readyz file)."""
        now = time.time()
        if error is not None and self._down_since is None:
            self._down_since = now
            log.warning("fleet mirror: PostgreSQL unusable, rows wait in the spool: %s", error)
        elif error is None and self._down_since is not None:
            log.info("fleet mirror: PostgreSQL back after %.0f s", now - self._down_since)
            self._down_since = None
        try:
            rows, seconds = self._lag(self._marks)
        except sqlite3.Error:
            rows, seconds = -1, -1.0
        metrics.fleet_mirrored(rows, seconds, error is None)
        status.write(
            self._root,
            status.MirrorStatus(self.fleet.node, rows, seconds, error, self._down_since),
        )


def _check(conn: Any) -> None:
    """The pool's check before lending a connection: a killed server is noticed here."""
    conn.execute("SELECT 1")


def _ro(path: Path) -> sqlite3.Connection:
    """A short read-only connection: the mirror never holds a lock the router needs."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


class FleetMirror:
    """The forwarder's handle: starts, keeps or restarts the mirror as configs come."""

    def __init__(self) -> None:
        self._mirror: Mirror | None = None

    def apply(self, loaded: LoadedConfig) -> None:
        """Follow the config: no `fleet:`, no mirror; a changed `fleet:` starts afresh."""
        fleet = loaded.config.fleet
        if self._mirror is not None and self._mirror.fleet == fleet:
            self._mirror.apply(loaded)
            return
        self.stop()
        if fleet is not None:
            self._mirror = Mirror(loaded)
            self._mirror.start()

    def stop(self) -> None:
        """Stop the mirror, if any."""
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
