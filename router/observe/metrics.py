"""The metrics call sites: one line where something happens, plain values as arguments.

Every function here is a no-op until `enable()` (daemon) or `init_process()` (a child):
without `metrics:` in the rule file the hot path pays one lookup. The instruments, the
multiprocess set-up and the labels a config names live in `router.observe.instruments`
(re-exported here, so a process calls `metrics.enable`, `metrics.config_applied`...).
What the daemon alone knows (config version, reloads, queues, spool space) is read at
scrape time by `router.observe.exporter`, not written here.

A worker process calls `init_process()` then `config_applied(config)` (and again after
each reload it gets); its supervisor calls `process_dead(pid)` when a worker dies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.observe import instruments
from router.observe.instruments import (
    ENV,
    OTHER,
    PREFIX,
    REJECT_REASONS,
    config_applied,
    disable_children,
    enable,
    init_process,
    process_dead,
    shared_folder,
    status_labels,
)

__all__ = [
    "ENV",
    "PREFIX",
    "REJECT_REASONS",
    "config_applied",
    "disable_children",
    "enable",
    "init_process",
    "process_dead",
    "shared_folder",
    "status_labels",
]


# --- receiving -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreTimer:
    """What `c_store_started` noted: when, and how big the received file was."""

    start: float
    size: int


def c_store_started(path: Path) -> StoreTimer | None:
    """Note the start and size of a C-STORE's handling (before the file may move)."""
    if instruments.active is None:
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    return StoreTimer(time.perf_counter(), size)


def c_store_done(timer: StoreTimer | None, calling_ae: str, status: int, rule_name: str) -> None:
    """Count one answered C-STORE: instance, bytes, status, rule, handling time."""
    m = instruments.active
    if m is None or timer is None:
        return
    instances, size, response, rule = m.store_child(m.caller(calling_ae), status, rule_name)
    instances.inc()
    size.inc(timer.size)
    response.inc()
    if rule is not None:
        rule.inc()
    m.store_seconds.observe(time.perf_counter() - timer.start)


def association_accepted(assoc: object, calling_ae: str) -> None:
    """An association was accepted: counted, and open until `association_closed`."""
    m = instruments.active
    if m is None:
        return
    with m.lock:
        m.open_associations[id(assoc)] = True
    m.accepted.labels(m.caller(calling_ae)).inc()
    m.active.inc()


def association_closed(assoc: object) -> None:
    """A connection closed; only an accepted association leaves the active count."""
    m = instruments.active
    if m is None:
        return
    with m.lock:
        was_open = m.open_associations.pop(id(assoc), False)
    if was_open:
        m.active.dec()


def association_rejected(reason: str) -> None:
    """An A-ASSOCIATE-RJ was sent; `reason` is one of REJECT_REASONS."""
    m = instruments.active
    if m is not None:
        m.rejected.labels(reason if reason in REJECT_REASONS else OTHER).inc()


def reject_reason(result_source: int | None, diagnostic: int | None) -> str:
    """A REJECT_REASONS entry for pynetdicom's own rejections (PS3.8 9.3.4)."""
    if (result_source, diagnostic) == (3, 2):
        return "limit"
    if (result_source, diagnostic) == (1, 7):
        return "called_ae"
    if (result_source, diagnostic) == (1, 3):
        return "callers"
    return "protocol" if result_source == 2 else OTHER


def connection_evicted() -> None:
    """A connection without an A-ASSOCIATE-RQ was closed to make room for a new one."""
    m = instruments.active
    if m is not None:
        m.evicted.inc()


def unassociated_peak(count: int) -> None:
    """A new highest number of connections without an A-ASSOCIATE-RQ in this process."""
    m = instruments.active
    if m is not None:
        m.unassociated_peak.set(count)


# --- logging ---------------------------------------------------------------------------


def log_line_suppressed(logger: str) -> None:
    """A repeated warning of `logger` was held back (router.observe.ratelimit)."""
    m = instruments.active
    if m is not None:
        m.suppressed.labels(logger).inc()


# --- delivery --------------------------------------------------------------------------


def timer() -> Callable[[], float]:
    """A stopwatch: call the result for the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def destination_started(destination: str) -> None:
    """The forwarder serves a destination: its histogram exists (only in that process)."""
    m = instruments.active
    if m is not None:
        m.send_seconds.labels(destination)


def delivery_sent(destination: str, size: int, seconds: float) -> None:
    """One send (a C-STORE, a STOW-RS request) was answered: its bytes and time."""
    m = instruments.active
    if m is None:
        return
    m.sent_bytes.labels(destination).inc(size)
    m.send_seconds.labels(destination).observe(seconds)
    m.up.labels(destination).set(1)


def delivery_done(destination: str, result: str) -> None:
    """A queued delivery finished: 'delivered' or 'dead_letter'."""
    m = instruments.active
    if m is None:
        return
    m.deliveries.labels(destination, result).inc()
    if result == "delivered":
        m.last_delivery.labels(destination).set(time.time())


def delivery_retry(destination: str) -> None:
    """A failed attempt was scheduled again."""
    m = instruments.active
    if m is not None:
        m.retries.labels(destination).inc()


def destination_unreachable(destination: str) -> None:
    """No association: the destination is down as far as we can see."""
    m = instruments.active
    if m is not None:
        m.unreachable.labels(destination).inc()
        m.up.labels(destination).set(0)


# --- collected series and studies ---------------------------------------------------------


def unit_completed(level: str, reason: str) -> None:
    """A collected series or study was completed (quiet, released, max_wait, forced)."""
    m = instruments.active
    if m is not None:
        m.units_completed.labels(level, reason).inc()


def late_instance(level: str, policy: str) -> None:
    """An instance arrived for a series or study already complete; `policy` applied."""
    m = instruments.active
    if m is not None:
        m.late_instances.labels(level, policy).inc()


# --- fleet mirror ----------------------------------------------------------------------


def fleet_mirrored(lag_rows: int, lag_seconds: float, ok: bool) -> None:
    """A mirror round ended: how far behind it is, and whether PostgreSQL was reached."""
    m = instruments.active
    if m is None:
        return
    m.fleet_lag_rows.set(lag_rows)
    m.fleet_lag_seconds.set(lag_seconds)
    if ok:
        m.fleet_last_success.set(time.time())
    else:
        m.fleet_failures.inc()


def deid_withheld(profile: str) -> None:
    """A deidentify profile withheld an image that has or may have burned-in text."""
    m = instruments.active
    if m is not None:
        m.deid_withheld.labels(profile).inc()


# --- storage commitment -------------------------------------------------------------------


def commitments_open(count: int, oldest_seconds: float) -> None:
    """The transactions not yet reported, and the oldest one's age (the forwarder's timer)."""
    m = instruments.active
    if m is not None:
        m.commitments_pending.set(count)
        m.commitments_oldest.set(oldest_seconds)


def commitment_finished(outcome: str) -> None:
    """A transaction's report delivered (committed, failed) or given up (abandoned)."""
    m = instruments.active
    if m is not None:
        m.commitments.labels(outcome).inc()


def commitment_relay(outcome: str) -> None:
    """A destination asked for its own commitment (answer: relayed): its report recorded
    (committed, failed), none by the deadline (expired), or an N-ACTION not accepted
    (ask_failed)."""
    m = instruments.active
    if m is not None:
        m.commitment_relays.labels(outcome).inc()
