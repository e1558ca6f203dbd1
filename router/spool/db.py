"""The spool's two SQLite databases: their connections, schemas migrated on opening.

queue.db (WAL, synchronous=FULL by default) holds the objects and their deliveries
(`router.spool.queue`); decisions.db (WAL, synchronous=NORMAL) the decision log
(`router.spool.decisions`). A lost log line on power loss is acceptable; a queue row is not.
The schemas and their migrations are in `router.spool.schema`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from router.spool.schema import DECISION_MIGRATIONS, QUEUE_MIGRATIONS, migrate

QUEUE_DB = "queue.db"
DECISIONS_DB = "decisions.db"
IDLE_CONNECTIONS = 4  # per database: enough for the SCP's and the forwarder's threads


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
            migrate(db, root / QUEUE_DB, QUEUE_MIGRATIONS)
        with self.decisions() as db:
            migrate(db, root / DECISIONS_DB, DECISION_MIGRATIONS)

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
