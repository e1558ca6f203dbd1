"""The spool databases' schemas as ordered migrations, applied once at start-up.

Each database records the number of migrations applied in `PRAGMA user_version`. A spool
of the previous release has version 0 with its tables present: migration 1 is that
release's schema written with IF NOT EXISTS, so it is a no-op there and creates a new
spool. Later migrations only add (columns, tables, indexes): a row written by an older
release stays valid.

`migrate()` runs in one IMMEDIATE transaction, so several processes opening one spool at
once (the daemon's main process first, then its workers and forwarder, or a CLI command)
are serialised by SQLite: the first applies what is missing, the others find the version
current. A spool written by a newer release is refused (`SpoolTooNew`), never downgraded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from router.errors import StartupError

# queue.db, migration 1: the schema of the first releases (objects and their deliveries).
_QUEUE_1 = """
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
CREATE INDEX IF NOT EXISTS deliveries_object ON deliveries (object_id);
CREATE INDEX IF NOT EXISTS objects_uid ON objects (sop_instance_uid);
"""

# queue.db, migration 2: studies and series as received (`router.spool.studies`), and
# deliveries held until their series or study is complete.
_QUEUE_2 = """
ALTER TABLE objects ADD COLUMN series_number INTEGER;
ALTER TABLE objects ADD COLUMN instance_number INTEGER;
ALTER TABLE objects ADD COLUMN rule TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN collect TEXT;   -- NULL: per instance; series | study
ALTER TABLE deliveries ADD COLUMN batch INTEGER;  -- the completion that released it
CREATE TABLE received_units (
    level TEXT NOT NULL,            -- study | series
    uid TEXT NOT NULL,              -- its Study or Series Instance UID
    study_uid TEXT NOT NULL,        -- a series' study (a study's own UID)
    calling_ae TEXT NOT NULL,       -- of its first instance
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    count INTEGER NOT NULL,         -- instances received (again after a completion: late)
    late INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'collecting',  -- collecting | complete
    reason TEXT,                    -- quiet | released | max_wait | forced
    completed_at REAL,
    PRIMARY KEY (level, uid)
);
CREATE INDEX received_units_state ON received_units (state, last_at);
CREATE INDEX deliveries_batch ON deliveries (batch) WHERE batch IS NOT NULL;
CREATE INDEX deliveries_held ON deliveries (collect, state) WHERE state = 'held';
"""

# queue.db, migration 3: `queue retry` (another process) asks the forwarder to end a
# destination's pause now; '*' for every destination (issue 21's kick). IF NOT EXISTS: a
# spool of a build that created it with the first schema keeps it.
_QUEUE_3 = """
CREATE TABLE IF NOT EXISTS kicks (
    destination TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""

# queue.db, migration 4: Storage Commitment transactions (`router.spool.commitments`),
# recorded before the N-ACTION is answered, and the instances each one references.
_QUEUE_4 = """
CREATE TABLE commitments (
    transaction_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,       -- the modality: called back under this AE title
    called_ae TEXT NOT NULL,        -- the router's AE title as the modality called it
    peer TEXT NOT NULL,             -- the modality's address (its commitment_port gets the report)
    received_at REAL NOT NULL,
    deadline REAL NOT NULL,         -- received_at + timeout: what is not done then has failed
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | reporting | reported | abandoned
    event_type INTEGER,             -- once decided: 1 all committed, 2 some failed
    attempts INTEGER NOT NULL DEFAULT 0,    -- reports tried
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    reported_at REAL,
    lease_at REAL                   -- renewed while the request's association is open
);
CREATE TABLE commitment_items (
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid),
    position INTEGER NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    failure INTEGER,                -- once decided: NULL committed, else its Failure Reason
    decided INTEGER NOT NULL DEFAULT 0,  -- 1 once final: not looked at again
    PRIMARY KEY (transaction_uid, position)
);
CREATE INDEX commitments_due ON commitments (state, next_attempt_at);
"""

# queue.db, migration 5: destinations an administrator paused (`queue pause`, the status
# page): the forwarder sends them nothing until resumed; kept across restarts.
_QUEUE_5 = """
CREATE TABLE IF NOT EXISTS paused (
    destination TEXT PRIMARY KEY,
    by TEXT NOT NULL,       -- who paused it: a page user, or the login of `queue pause`
    at REAL NOT NULL
);
"""

# queue.db, migration 6: deliveries by the time of their last change, which the fleet
# mirror (`router.observe.fleet.mirror`) reads each round; without it a full scan.
_QUEUE_6 = """
CREATE INDEX IF NOT EXISTS deliveries_changed ON deliveries (updated_at, id);
"""

# queue.db, migration 7: `answer: relayed` (`router.spool.relays`): the router's own Storage
# Commitment request to each `commitment: true` destination, per modality transaction, and
# the destination's verdict on each instance it was asked about.
_QUEUE_7 = """
CREATE TABLE commitment_relays (
    relay_uid TEXT PRIMARY KEY,     -- our own Transaction UID in the N-ACTION to the destination
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid),  -- the modality's
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'asking',  -- asking | asked | answered | closed
    created_at REAL NOT NULL,
    asked_at REAL,                  -- the destination answered the N-ACTION 0x0000
    next_attempt_at REAL NOT NULL,  -- when asking: the next N-ACTION
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    answered_at REAL,               -- its N-EVENT-REPORT recorded
    event_type INTEGER,
    UNIQUE (transaction_uid, destination)
);
CREATE TABLE commitment_relay_items (
    relay_uid TEXT NOT NULL REFERENCES commitment_relays(relay_uid),
    position INTEGER NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    failure INTEGER,                -- once answered: NULL committed, else its Failure Reason
    PRIMARY KEY (relay_uid, position)
);
CREATE INDEX commitment_relays_due ON commitment_relays (state, next_attempt_at);
CREATE INDEX commitment_relays_answered ON commitment_relays (answered_at);
"""

QUEUE_MIGRATIONS: tuple[str, ...] = (
    _QUEUE_1,
    _QUEUE_2,
    _QUEUE_3,
    _QUEUE_4,
    _QUEUE_5,
    _QUEUE_6,
    _QUEUE_7,
)

DECISION_MIGRATIONS: tuple[str, ...] = (
    """
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
""",
)


class SpoolTooNew(StartupError):
    """The spool was written by a newer release: refused, never downgraded."""


def migrate(conn: sqlite3.Connection, name: object, migrations: Sequence[str]) -> int:
    """Apply the migrations `conn`'s database lacks, in one transaction; its version after."""
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: one process migrates at a time
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise SpoolTooNew(
                f"{name} has schema version {version}, newer than this release's"
                f" {len(migrations)}: run the release that wrote it, or a newer one"
            )
        for sql in migrations[version:]:
            for statement in _statements(sql):
                conn.execute(statement)
        if version < len(migrations):
            conn.execute(f"PRAGMA user_version={len(migrations)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(migrations)


def _statements(sql: str) -> list[str]:
    """The statements of a migration (executescript would commit the transaction first)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
