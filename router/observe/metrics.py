"""Prometheus instruments, shared by every process of one router; call sites are one line.

prometheus-client's multiprocess mode: the daemon wipes `SPOOL/metrics` at start-up and
sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, and hands the folder
to each child it starts (`init_process`), so each process (the daemon, the forwarder,
receiving workers) writes its own mmap'd files there, and the daemon's `/metrics` sums
them (`router.observe.exporter`). Counters and histograms of a dead process stay in its files:
after a restart the sums go on from there, never backwards. Gauges say how they combine
(`multiprocess_mode`).

Everything here is a no-op until `enable()` (daemon) or `init_process()` (a child, given
the daemon's `shared_folder()`):
without `metrics:` in the rule file the hot path pays one global lookup. What the
daemon alone knows (config version, reloads, queues, spool space) is read at scrape
time by `router.observe.exporter`, not written here.

A worker process calls `init_process()` then `config_applied(config)` (and again after
each reload it gets); its supervisor calls `process_dead(pid)` when a worker dies.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.dicom import status

if TYPE_CHECKING:
    from router.config.model import Config

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "dicom_router_"
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
OTHER = "other"
REJECT_REASONS = ("callers", "limit", "called_ae", "protocol", OTHER)
DELIVERY_RESULTS = ("delivered", "dead_letter")
# Statuses the router itself answers whatever the rule file says (router.actions.pipeline).
BUILTIN_STATUSES = (0x0000, 0x0122, 0xA700, 0xA900, 0xC210, 0xC211)
_KNOWN_CODES = frozenset(
    {*BUILTIN_STATUSES, *status.GENERAL_FAILURES, *status.WARNINGS, 0x0001, 0x0107, 0x0116}
)
_MAX_CALLERS_CACHED = 1024


def status_labels(code: int) -> tuple[str, str]:
    """(class, code) labels: known codes exactly, others by range, so the set stays small."""
    if code in _KNOWN_CODES:
        text = f"0x{code:04X}"
    elif 0xA700 <= code <= 0xA7FF or 0xA900 <= code <= 0xA9FF:
        text = f"0x{code >> 8:02X}xx"
    elif 0xC000 <= code <= 0xCFFF:
        text = "0xCxxx"
    elif 0xB000 <= code <= 0xBFFF:
        text = "0xBxxx"
    else:
        text = OTHER
    return status.category(code), text


class _Instruments:
    """The metrics of one process; children are cached so a C-STORE costs a few µs."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(PREFIX + name, doc, labels)

        self.received = counter(
            "received_instances", "C-STOREs received, by calling AE title", ("calling_ae",)
        )
        self.received_bytes = counter(
            "received_bytes", "Bytes of received instances (as spooled)", ("calling_ae",)
        )
        self.responses = counter(
            "c_store_responses", "C-STORE statuses answered", ("status_class", "status")
        )
        self.rule_matches = counter("rule_matches", "C-STOREs decided by each rule", ("rule",))
        self.store_seconds = Histogram(
            PREFIX + "c_store_duration_seconds",
            "Time from a received file to its status (rules, stores, spooling)",
            buckets=STORE_BUCKETS,
        )
        self.accepted = counter(
            "associations_accepted", "Associations accepted, by calling AE", ("calling_ae",)
        )
        self.rejected = counter("associations_rejected", "Associations rejected", ("reason",))
        self.active = Gauge(
            PREFIX + "associations_active",
            "Associations open now",
            multiprocess_mode="livesum",  # a dead worker's associations are gone
        )
        self.deliveries = counter(
            "deliveries", "Queued deliveries finished, by result", ("destination", "result")
        )
        self.retries = counter(
            "delivery_retries", "Failed delivery attempts scheduled again", ("destination",)
        )
        self.unreachable = counter(
            "destination_unreachable", "Attempts to associate that failed", ("destination",)
        )
        self.sent_bytes = counter(
            "sent_bytes", "Bytes of instances sent to a destination", ("destination",)
        )
        self.send_seconds = Histogram(
            PREFIX + "delivery_duration_seconds",
            "Time of one send to a destination, association set-up included",
            ("destination",),
            buckets=SEND_BUCKETS,
        )
        self.up = Gauge(
            PREFIX + "destination_up",
            "1 unless the last attempt to reach the destination failed",
            ("destination",),
            multiprocess_mode="mostrecent",  # whichever process saw it last is right
        )
        self.last_delivery = Gauge(
            PREFIX + "destination_last_delivery_timestamp_seconds",
            "When the last delivery succeeded (Unix time; 0 = not since start-up)",
            ("destination",),
            multiprocess_mode="max",
        )
        self.lock = threading.Lock()
        self.callers: tuple[str, ...] = ()
        self.caller_cache: dict[str, str] = {}
        self.store_children: dict[tuple[str, int, str], tuple[Any, ...]] = {}
        self.open_associations: dict[int, bool] = {}
        self.known_destinations: set[str] = set()
        self.owner = False  # the daemon: the one process that sets initial gauge values

    def caller(self, calling_ae: str) -> str:
        """The `callers` entry this AE title matches (as written), else 'other'."""
        label = self.caller_cache.get(calling_ae)
        if label is None:
            from fnmatch import fnmatchcase

            label = next((p for p in self.callers if fnmatchcase(calling_ae, p)), OTHER)
            if len(self.caller_cache) >= _MAX_CALLERS_CACHED:
                self.caller_cache.clear()
            self.caller_cache[calling_ae] = label
        return label

    def store_child(self, caller: str, code: int, rule: str) -> tuple[Any, ...]:
        key = (caller, code, rule)
        children = self.store_children.get(key)
        if children is None:
            children = (
                self.received.labels(caller),
                self.received_bytes.labels(caller),
                self.responses.labels(*status_labels(code)),
                self.rule_matches.labels(rule) if rule != "-" else None,
            )
            if len(self.store_children) >= _MAX_CALLERS_CACHED:
                self.store_children.clear()
            self.store_children[key] = children
        return children


_m: _Instruments | None = None


def enabled() -> bool:
    """True once this process writes metrics."""
    return _m is not None


def enable(spool: Path, config: Config) -> None:
    """Daemon start-up, before any child starts: a fresh SPOOL/metrics, instruments."""
    global _m
    folder = spool / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    _check_multiprocess()
    _m = _Instruments()
    _m.owner = True
    config_applied(config)


def disable_children() -> None:
    """Metrics are off: no child may inherit a PROMETHEUS_MULTIPROC_DIR from our caller."""
    os.environ.pop(ENV, None)
    os.environ.pop(ENV.lower(), None)


def shared_folder() -> str | None:
    """The folder the daemon's processes write metrics to; None when metrics are off."""
    return os.environ.get(ENV) if _m is not None else None


def init_process(folder: str | None) -> None:
    """A child (forwarder, worker): write metrics into `folder` (`shared_folder()`), if any.

    Children are forks of a fork server started before the daemon knew its config, so
    the folder comes as an argument, not in the environment they inherited.
    """
    global _m
    if folder is None:
        os.environ.pop(ENV, None)
        return
    os.environ[ENV] = folder  # before prometheus_client's first import here
    if _m is None:
        _check_multiprocess()
        _m = _Instruments()


def _check_multiprocess() -> None:
    from prometheus_client import values

    # The value class is chosen when prometheus_client is first imported.
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set")


def config_applied(config: Config) -> None:
    """Create every label set the config names, at zero, so alerts work before any event.

    Call it in each process that receives a config (start-up, reload); safe in any.
    """
    m = _m
    if m is None:
        return
    from router.config.model import DicomDestination

    with m.lock:
        m.callers = tuple(dict.fromkeys(c.ae_title for c in config.callers or ()))
        m.caller_cache = {}
        m.store_children = {}
    for caller in (*m.callers, OTHER):
        m.received.labels(caller)
        m.received_bytes.labels(caller)
        m.accepted.labels(caller)
    for rule in (*(r.name for r in config.rules), "default"):
        m.rule_matches.labels(rule)
    codes = {*BUILTIN_STATUSES, *_configured_statuses(config)}
    for code in codes:
        m.responses.labels(*status_labels(code))
    for reason in REJECT_REASONS:
        m.rejected.labels(reason)
    for name, dest in config.destinations.items():
        if not isinstance(dest, DicomDestination):
            continue
        for result in DELIVERY_RESULTS:
            m.deliveries.labels(name, result)
        m.retries.labels(name)
        m.unreachable.labels(name)
        m.sent_bytes.labels(name)
        m.last_delivery.labels(name).set(0)
        # Only the daemon, once per name: a worker started later must not overwrite
        # a "down" the forwarder has seen since (mostrecent mode).
        if m.owner and name not in m.known_destinations:
            m.known_destinations.add(name)
            m.up.labels(name).set(1)


def _configured_statuses(config: Config) -> set[int]:
    codes: set[int] = set()
    for actions in (*(r.actions for r in config.rules), config.default):
        for action in actions:
            code = getattr(action, "reject", None) or getattr(action, "warn", None)
            if isinstance(code, int):
                codes.add(code)
    return codes


# --- receiving -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreTimer:
    """What `c_store_started` noted: when, and how big the received file was."""

    start: float
    size: int


def c_store_started(path: Path) -> StoreTimer | None:
    """Note the start and size of a C-STORE's handling (before the file may move)."""
    if _m is None:
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    return StoreTimer(time.perf_counter(), size)


def c_store_done(
    timer: StoreTimer | None, calling_ae: str, status: int, rule_name: str
) -> None:
    """Count one answered C-STORE: instance, bytes, status, rule, handling time."""
    m = _m
    if m is None or timer is None:
        return
    instances, size, response, rule = m.store_child(
        m.caller(calling_ae), status, rule_name
    )
    instances.inc()
    size.inc(timer.size)
    response.inc()
    if rule is not None:
        rule.inc()
    m.store_seconds.observe(time.perf_counter() - timer.start)


def association_accepted(assoc: object, calling_ae: str) -> None:
    """An association was accepted: counted, and open until `association_closed`."""
    m = _m
    if m is None:
        return
    with m.lock:
        m.open_associations[id(assoc)] = True
    m.accepted.labels(m.caller(calling_ae)).inc()
    m.active.inc()


def association_closed(assoc: object) -> None:
    """A connection closed; only an accepted association leaves the active count."""
    m = _m
    if m is None:
        return
    with m.lock:
        was_open = m.open_associations.pop(id(assoc), False)
    if was_open:
        m.active.dec()


def association_rejected(reason: str) -> None:
    """An A-ASSOCIATE-RJ was sent; `reason` is one of REJECT_REASONS."""
    if _m is not None:
        _m.rejected.labels(reason if reason in REJECT_REASONS else OTHER).inc()


def reject_reason(result_source: int | None, diagnostic: int | None) -> str:
    """A REJECT_REASONS entry for pynetdicom's own rejections (PS3.8 9.3.4)."""
    if (result_source, diagnostic) == (3, 2):
        return "limit"
    if (result_source, diagnostic) == (1, 7):
        return "called_ae"
    if (result_source, diagnostic) == (1, 3):
        return "callers"
    return "protocol" if result_source == 2 else OTHER


# --- delivery --------------------------------------------------------------------------


def timer() -> Callable[[], float]:
    """A stopwatch: call the result for the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def destination_started(destination: str) -> None:
    """The forwarder serves a destination: its histogram exists (only in that process)."""
    if _m is not None:
        _m.send_seconds.labels(destination)


def delivery_sent(destination: str, path: Path, seconds: float) -> None:
    """One send reached the destination (whatever it answered): time and bytes."""
    m = _m
    if m is None:
        return
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    m.sent_bytes.labels(destination).inc(size)
    m.send_seconds.labels(destination).observe(seconds)
    m.up.labels(destination).set(1)


def delivery_done(destination: str, result: str) -> None:
    """A queued delivery finished: 'delivered' or 'dead_letter'."""
    m = _m
    if m is None:
        return
    m.deliveries.labels(destination, result).inc()
    if result == "delivered":
        m.last_delivery.labels(destination).set(time.time())


def delivery_retry(destination: str) -> None:
    """A failed attempt was scheduled again."""
    if _m is not None:
        _m.retries.labels(destination).inc()


def destination_unreachable(destination: str) -> None:
    """No association: the destination is down as far as we can see."""
    m = _m
    if m is not None:
        m.unreachable.labels(destination).inc()
        m.up.labels(destination).set(0)


def process_dead(pid: int | None) -> None:
    """A child died: drop its live gauges (its counters keep counting in the sums)."""
    if _m is None or pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
