"""The spool's two SQLite databases: their schemas and a small pool of connections.

queue.db (WAL, synchronous=FULL by default) holds the objects and their deliveries
(`router.spool.queue`); decisions.db (WAL, synchronous=NORMAL) the decision log
(`router.spool.decisions`). A lost log line on power loss is acceptable; a queue row is not.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QUEUE_DB = "queue.db"
DECISIONS_DB = "decisions.db"
IDLE_CONNECTIONS = 4  # per database: enough for the SCP's and the forwarder's threads

QUEUE_SCHEMA = """
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
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead (a dead letter)
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at);
-- `queue retry` (another process) asks the forwarder to end a destination's pause now;
-- '*' for every destination. The forwarder reads it only while a destination is paused.
CREATE TABLE IF NOT EXISTS kicks (
    destination TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_object ON deliveries (object_id);
CREATE INDEX IF NOT EXISTS objects_uid ON objects (sop_instance_uid);
"""

DECISION_SCHEMA = """
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


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Databases:
    """The two databases of a spool folder, their schemas made; thread-safe.

    sqlite3 objects must not be used by two threads at once: each `with` block borrows
    a connection from a small pool and gives it back, so an association's thread holds
    none once its C-STORE is answered, and at most IDLE_CONNECTIONS wait idle per db.
    """

    def __init__(self, root: Path, *, synchronous: str = "FULL") -> None:
        self.root = root
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._idle: dict[str, list[sqlite3.Connection]] = {}
        self._closed = False
        with self.queue() as db:
            db.executescript(QUEUE_SCHEMA)
        with self.decisions() as db:
            db.executescript(DECISION_SCHEMA)

    @contextmanager
    def queue(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection to queue.db."""
        with self._borrow(QUEUE_DB, self._synchronous) as conn:
            yield conn

    @contextmanager
    def decisions(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection to decisions.db (synchronous=NORMAL: see module doc)."""
        with self._borrow(DECISIONS_DB, "NORMAL") as conn:
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
