"""The fleet view: `trace --fleet` and `queue --fleet` read every node from PostgreSQL.

Each line names the node that holds the instance (its disk has the file and the queue).
A node whose last mirror is older than `fleet.stale_after` is shown as stale, with that
time: what it held then may be stranded on its disk. Times are compared with
PostgreSQL's clock, so the nodes' clocks need not agree with the reader's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from router.config.fleet import Fleet, read_dsn
from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.errors import RouterError


@dataclass(frozen=True)
class Node:
    """One node as its last mirror left it."""

    name: str
    last_mirror: datetime
    age: float  # seconds since its last mirror, by PostgreSQL's clock
    lag_rows: int
    stale: bool

    def describe(self) -> str:
        """`gw-1: mirrored 3s ago` or `gw-2: STALE, last mirror 2024-... (5.0m ago)`."""
        when = self.last_mirror.astimezone().isoformat(sep=" ", timespec="seconds")
        if self.stale:
            return f"{self.name}: STALE, last mirror {when} ({age_text(self.age)} ago)"
        return f"{self.name}: mirrored {age_text(self.age)} ago, {self.lag_rows} rows behind"


@contextmanager
def connect(fleet: Fleet, base_dir: Path) -> Iterator[Any]:
    """A connection to the fleet's PostgreSQL; RouterError (exit 2) when it fails."""
    import psycopg

    timeout = round(fleet.timeout)
    try:
        conn = psycopg.connect(
            read_dsn(fleet, base_dir),
            connect_timeout=timeout,
            options=f"-c statement_timeout={timeout * 1000}",
            application_name="dicom-router fleet view",
            autocommit=True,
        )
    except (psycopg.Error, OSError) as exc:
        raise RouterError(f"fleet: cannot reach PostgreSQL: {_first_line(exc)}") from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise RouterError(f"fleet: PostgreSQL: {_first_line(exc)}") from None


def nodes(conn: Any, stale_after: float) -> dict[str, Node]:
    """Every node that has mirrored, by name."""
    rows = conn.execute(
        "SELECT node, last_mirror, EXTRACT(EPOCH FROM now() - last_mirror)::float8, lag_rows"
        " FROM nodes ORDER BY node"
    ).fetchall()
    return {r[0]: Node(r[0], r[1], r[2], r[3], r[2] > stale_after) for r in rows}


def trace_lines(conn: Any, uid: str, stale_after: float) -> list[str]:
    """`trace --fleet UID`: each node's decisions and deliveries; [] when none has it."""
    decisions = conn.execute(
        "SELECT node, at, sop_instance_uid, sop_class_uid, calling_ae, peer, called_ae, rule,"
        " actions, status, config_version, comment FROM decisions WHERE sop_instance_uid=%(u)s"
        " OR series_uid=%(u)s OR study_uid=%(u)s ORDER BY at, node, id",
        {"u": uid},
    ).fetchall()
    deliveries = conn.execute(
        "SELECT node, destination, sop_instance_uid, state, attempts, last_status, last_error"
        " FROM deliveries WHERE sop_instance_uid=%(u)s OR series_uid=%(u)s OR study_uid=%(u)s"
        " ORDER BY received_at, node, id",
        {"u": uid},
    ).fetchall()
    if not decisions and not deliveries:
        return []
    out = []
    for (
        node,
        at,
        sop,
        cls,
        calling,
        peer,
        called,
        rule,
        actions,
        status,
        version,
        note,
    ) in decisions:
        when = datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds")
        out.append(
            f"[{node}] {when} {sop} {sop_class_name(cls)} from {calling}@{peer} to {called}: "
            f"rule {rule} [{actions or '-'}] status {hex_code(status)} config {version}"
            + (f" ({note})" if note else "")
        )
    for node, dest, sop, state, attempts, last_status, error in deliveries:
        out.append(
            f"  [{node}] -> {dest}: {sop} {state} after {attempts} attempt(s), "
            f"last status {hex_code(last_status)}" + (f" ({error})" if error else "")
        )
    known = nodes(conn, stale_after)
    held = sorted({r[0] for r in decisions} | {r[0] for r in deliveries})
    out.extend(f"node {known[n].describe()}" for n in held if n in known)
    return out


def queue_lines(conn: Any, destination: str | None, stale_after: float) -> list[str]:
    """`queue --fleet`: waiting and dead deliveries, then each node's figures and state."""
    now = time.time()
    rows = conn.execute(
        "SELECT node, sop_instance_uid, destination, state, attempts, received_at, last_error"
        " FROM deliveries WHERE state IN ('pending', 'dead')"
        " AND (%(d)s::text IS NULL OR destination=%(d)s) ORDER BY node, received_at, id",
        {"d": destination},
    ).fetchall()
    out = [
        f"{'node':<12} {'SOP Instance UID':<64} {'destination':<12} {'state':<8} {'tries':>5} "
        f"{'age':>6}  last error"
    ]
    for node, sop, dest, state, attempts, received, error in rows:
        age = age_text(now - received) if received is not None else "?"
        out.append(
            f"{node:<12} {sop:<64} {dest:<12} {state:<8} {attempts:>5} {age:>6}  {error or ''}"
        )
    known = nodes(conn, stale_after)
    figures = conn.execute(
        "SELECT node, destination, pending, dead_letters FROM queues"
        " WHERE %(d)s::text IS NULL OR destination=%(d)s ORDER BY node, destination",
        {"d": destination},
    ).fetchall()
    for node, dest, pending, dead in figures:
        stranded = known.get(node)
        note = " (stranded on a stale node)" if stranded and stranded.stale and pending else ""
        out.append(f"{node}: {dest}: {pending} pending, {dead} dead letters{note}")
    out.extend(f"node {n.describe()}" for n in known.values())
    return out


def age_text(seconds: float) -> str:
    """A duration as `42s`, `3.5m`, `2.0h` or `1.2d`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
