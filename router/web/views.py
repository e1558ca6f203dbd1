"""What each page shows, read from the spool and the daemon; short, bounded queries.

Each view takes a `Context` and the query parameters and returns the template's
variables. Scans are bounded to the newest rows (SCAN_ROWS), so a big spool costs a page
no more than that; the page slots (`server`) bound how many run at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.observe.exporter import Monitored
from router.observe.instruments import queued_destinations
from router.spool.database import Spool
from router.spool.queue import DEAD_LETTER, DELIVERED
from router.spool.stats import QueueStats, queue_stats

SCAN_ROWS = 100_000  # the newest decisions/deliveries a rate or a filter looks at
RECENT = 100  # decisions listed
HOUR = 3600.0


@dataclass
class Context:
    """What a view reads: the daemon (config, reloads) and its spool."""

    daemon: Monitored
    spool: Spool
    workers: int  # receiving processes (listen.workers or the default), fixed at start


def overview(ctx: Context, _query: Mapping[str, str]) -> dict[str, Any]:
    """Node, config version and load time, last reload, listener, spool space, rate."""
    loaded = ctx.daemon.current()
    listen = loaded.config.listen
    try:
        st = os.statvfs(loaded.spool)
        free: float | None = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    now = time.time()
    received = ctx.spool.decisions.received_since(now - 60, SCAN_ROWS)
    return {
        "node": os.uname().nodename,
        "config_path": str(loaded.path),
        "version": loaded.version,
        "reloads": ctx.daemon.reloads,
        "accepting": ctx.daemon.accepting,
        "listen": listen,
        "workers": ctx.workers,
        "spool": str(loaded.spool),
        "free": free,
        "min_free": loaded.config.spool_min_free,
        "per_minute": received,
        "now": now,
    }


def destinations(ctx: Context, _query: Mapping[str, str]) -> dict[str, Any]:
    """Per destination: state (paused, failing, delivering, idle), queue depth, oldest
    pending, last error, the last hour."""
    loaded = ctx.daemon.current()
    names = queued_destinations(loaded.config)
    stats = queue_stats(loaded.spool, names)
    now = time.time()
    hour = ctx.spool.activity.finished_since(now - HOUR, SCAN_ROWS)
    failing = ctx.spool.activity.failing()
    paused = ctx.spool.pauses.listing()
    rows = []
    for name in names:
        q = stats.get(name, QueueStats())
        since, next_at, error = failing.get(name, (None, None, None))
        pause = paused.get(name)
        if pause is not None:
            state = "paused"
        elif since is not None:
            state = "failing"
        elif q.pending:
            state = "delivering"
        else:
            state = "idle"
        rows.append(
            {
                "name": name,
                "state": state,
                "since": since,
                "paused_by": pause.by if pause else None,
                "paused_at": pause.at if pause else None,
                "next_attempt": next_at,
                "pending": q.pending,
                "dead": q.dead_letters,
                "oldest": q.oldest_pending,
                "last_error": error,
                "delivered_hour": hour.get((name, DELIVERED), 0),
                "dead_hour": hour.get((name, DEAD_LETTER), 0),
            }
        )
    return {"rows": rows, "now": now}


def dead_letters(ctx: Context, query: Mapping[str, str]) -> dict[str, Any]:
    """Dead letters per destination, newest failures last, with reason and time."""
    destination = query.get("destination") or None
    entries = ctx.spool.queue.entries(destination, (DEAD_LETTER,))[: RECENT * 5]
    by_destination: dict[str, list[dict[str, Any]]] = {}
    for d in entries:
        by_destination.setdefault(d.destination, []).append(
            {
                "id": d.id,
                "sop": d.sop_instance_uid,
                "sop_class": sop_class_name(d.sop_class_uid),
                "status": hex_code(d.last_status),
                "error": d.last_error,
                "received": d.received_at,
                "attempts": d.attempts,
            }
        )
    return {
        "groups": sorted(by_destination.items()),
        "destination": destination,
        "now": time.time(),
    }


def decisions(ctx: Context, query: Mapping[str, str]) -> dict[str, Any]:
    """The last RECENT C-STOREs, filtered by calling AE, rule and status (hex)."""
    filters = {k: query.get(k, "").strip() for k in ("calling_ae", "rule", "status")}
    status: int | None = None
    if filters["status"]:
        try:
            status = int(filters["status"], 16)
        except ValueError:
            filters["status_error"] = f"{filters['status']!r} is not a hex status"
    found = ctx.spool.decisions.recent(
        RECENT, SCAN_ROWS, calling_ae=filters["calling_ae"], rule=filters["rule"], status=status
    )
    return {
        "rows": [
            {
                "at": r.at,
                "sop": r.sop_instance_uid,
                "sop_class": sop_class_name(r.sop_class_uid),
                "calling_ae": r.calling_ae,
                "peer": r.peer,
                "rule": r.rule,
                "status": hex_code(r.status),
                "ok": r.status == 0,
                "comment": r.comment,
            }
            for r in found
        ],
        "filters": filters,
        "now": time.time(),
    }


def trace(ctx: Context, query: Mapping[str, str]) -> dict[str, Any]:
    """The timeline of a Study, Series or SOP Instance UID (the decision log keeps no
    Accession Number)."""
    uid = query.get("uid", "").strip()
    if not uid:
        return {"uid": "", "decisions": [], "deliveries": [], "units": [], "now": time.time()}
    found, deliveries = ctx.spool.trace(uid)
    return {
        "uid": uid,
        "decisions": [
            {
                "at": r.at,
                "sop": r.sop_instance_uid,
                "sop_class": sop_class_name(r.sop_class_uid),
                "calling_ae": r.calling_ae,
                "peer": r.peer,
                "called_ae": r.called_ae,
                "rule": r.rule,
                "actions": r.actions,
                "status": hex_code(r.status),
                "ok": r.status == 0,
                "comment": r.comment,
                "version": r.config_version,
            }
            for r in found
        ],
        "deliveries": [
            {
                "destination": d.destination,
                "sop": d.sop_instance_uid,
                "state": d.state,
                "attempts": d.attempts,
                "status": hex_code(d.last_status),
                "error": d.last_error,
            }
            for d in deliveries
        ],
        "units": ctx.spool.units.of(uid),
        "now": time.time(),
    }


def studies(ctx: Context, _query: Mapping[str, str]) -> dict[str, Any]:
    """Series and studies being collected, oldest first."""
    return {"units": ctx.spool.units.listing()[: RECENT * 5], "now": time.time()}
