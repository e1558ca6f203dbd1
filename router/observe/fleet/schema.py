"""The fleet database's schema, created and migrated by the router: numbered SQL steps.

Each node applies the steps it lacks when its mirror connects (`migrate`), in one
transaction under an advisory lock, so two nodes starting together do not race and a
node never sees half a schema. `schema_version` lists the steps applied. A new step is
appended to MIGRATIONS, never edited in place (nodes already ran the old text).
Every row carries the node that holds the instance (`node`): the mirror copies, it
never moves anything.
"""

from __future__ import annotations

from typing import Any

# Any fixed number: the key of the advisory lock that serialises migrations.
_LOCK = 0x44524F55  # "DROU"

MIGRATIONS: tuple[str, ...] = (
    # 1: the nodes and their heartbeat, the decision log, deliveries, queue figures.
    """
    CREATE TABLE nodes (
        node text PRIMARY KEY,
        last_mirror timestamptz NOT NULL DEFAULT now(),   -- the heartbeat
        decisions_upto bigint NOT NULL DEFAULT 0,          -- local decisions.id mirrored
        deliveries_upto_at double precision NOT NULL DEFAULT 0,  -- deliveries (updated_at, id)
        deliveries_upto_id bigint NOT NULL DEFAULT 0,
        lag_rows bigint NOT NULL DEFAULT 0,
        lag_seconds double precision NOT NULL DEFAULT 0,
        config_version text NOT NULL DEFAULT ''
    );
    CREATE TABLE decisions (
        node text NOT NULL,
        id bigint NOT NULL,                                -- decisions.id on the node
        at double precision NOT NULL,
        sop_instance_uid text NOT NULL,
        series_uid text NOT NULL,
        study_uid text NOT NULL,
        sop_class_uid text NOT NULL,
        calling_ae text NOT NULL,
        called_ae text NOT NULL,
        peer text NOT NULL,
        rule text NOT NULL,
        actions text NOT NULL,
        status integer NOT NULL,
        comment text,
        config_version text NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX decisions_sop ON decisions (sop_instance_uid);
    CREATE INDEX decisions_series ON decisions (series_uid);
    CREATE INDEX decisions_study ON decisions (study_uid);
    CREATE TABLE deliveries (
        node text NOT NULL,
        id bigint NOT NULL,                                -- deliveries.id on the node
        sop_instance_uid text NOT NULL,
        series_uid text NOT NULL,
        study_uid text NOT NULL,
        destination text NOT NULL,
        state text NOT NULL,                               -- pending | delivered | dead
        attempts integer NOT NULL,
        last_status integer,
        last_error text,
        received_at double precision,
        updated_at double precision NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX deliveries_sop ON deliveries (sop_instance_uid);
    CREATE INDEX deliveries_series ON deliveries (series_uid);
    CREATE INDEX deliveries_study ON deliveries (study_uid);
    CREATE INDEX deliveries_dead ON deliveries (node, destination) WHERE state = 'dead';
    CREATE TABLE queues (
        node text NOT NULL,
        destination text NOT NULL,
        pending bigint NOT NULL,
        dead_letters bigint NOT NULL,
        oldest_pending double precision,                   -- received_at, epoch seconds
        PRIMARY KEY (node, destination)
    );
    """,
)


def migrate(conn: Any) -> int:
    """Apply the steps the database lacks (one transaction); return the version now."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        row = cur.fetchone()
        have = int(row[0]) if row else 0
        for version, sql in enumerate(MIGRATIONS[have:], start=have + 1):
            cur.execute(sql)
            cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return len(MIGRATIONS) if have <= len(MIGRATIONS) else have
