"""The Prometheus instruments of one router process, their multiprocess set-up, config labels.

prometheus-client's multiprocess mode: the daemon wipes `SPOOL/metrics` at start-up and
sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, and hands the folder
to each child it starts (`init_process`), so each process (the daemon, the forwarder,
receiving workers) writes its own mmap'd files there, and the daemon's `/metrics` sums
them (`router.observe.exporter`). Counters and histograms of a dead process stay in its
files: after a restart the sums go on from there, never backwards. Gauges say how they
combine (`multiprocess_mode`).

`active` is None until `enable()` (daemon) or `init_process()` (a child, given the
daemon's `shared_folder()`): without `metrics:` in the rule file every call site in
`router.observe.metrics` returns after one lookup.
"""

from __future__ import annotations

import os
import shutil
import threading
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.config.destinations import QueuedDestination
from router.dicom import status

if TYPE_CHECKING:
    from router.config.model import Config

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "dicom_router_"
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
OTHER = "other"
REJECT_REASONS = ("callers", "limit", "called_ae", "protocol", OTHER)
# The loggers whose repeated warnings go through router.observe.ratelimit.
RATE_LIMITED_LOGGERS = ("router.netlayer", "router.scp")
DELIVERY_RESULTS = ("delivered", "dead_letter")
_KNOWN_CODES = frozenset(
    {*status.BUILTIN_STATUSES, *status.GENERAL_FAILURES, *status.WARNINGS, *status.GENERAL_WARNINGS}
)
_MAX_CALLERS_CACHED = 1024


def status_labels(code: int) -> tuple[str, str]:
    """(class, code) labels: known codes exactly, others by range, so the set stays small."""
    kind = status.category(code)
    if code in _KNOWN_CODES:
        return kind, f"0x{code:04X}"
    if status.is_warning(code):  # the warnings not known by code are PS3.7's 0xBxxx
        return kind, f"0x{code >> 12:X}xxx"
    for low, high in status.FAILURE_RANGES if status.is_failure(code) else ():
        if low <= code <= high:
            return kind, _range_label(low, high)
    return kind, OTHER


def _range_label(low: int, high: int) -> str:
    """0xA700-0xA7FF -> 0xA7xx, 0xC000-0xCFFF -> 0xCxxx."""
    digits = (high - low).bit_length() // 4
    return f"0x{low >> (4 * digits):0{4 - digits}X}" + "x" * digits


# attribute: (kind, name after PREFIX, help, labels, multiprocess_mode or buckets)
_TABLE: dict[str, tuple[str, str, str, tuple[str, ...], Any]] = {
    "received": (
        "counter",
        "received_instances",
        "C-STOREs received, by calling AE title",
        ("calling_ae",),
        None,
    ),
    "received_bytes": (
        "counter",
        "received_bytes",
        "Bytes of received instances (as spooled)",
        ("calling_ae",),
        None,
    ),
    "responses": (
        "counter",
        "c_store_responses",
        "C-STORE statuses answered",
        ("status_class", "status"),
        None,
    ),
    "rule_matches": ("counter", "rule_matches", "C-STOREs decided by each rule", ("rule",), None),
    "store_seconds": (
        "histogram",
        "c_store_duration_seconds",
        "Time from a received file to its status (rules, stores, spooling)",
        (),
        STORE_BUCKETS,
    ),
    "accepted": (
        "counter",
        "associations_accepted",
        "Associations accepted, by calling AE",
        ("calling_ae",),
        None,
    ),
    "rejected": ("counter", "associations_rejected", "Associations rejected", ("reason",), None),
    # A dead worker's associations are gone.
    "active": ("gauge", "associations_active", "Associations open now", (), "livesum"),
    "deliveries": (
        "counter",
        "deliveries",
        "Queued deliveries finished, by result",
        ("destination", "result"),
        None,
    ),
    "retries": (
        "counter",
        "delivery_retries",
        "Failed delivery attempts scheduled again",
        ("destination",),
        None,
    ),
    "unreachable": (
        "counter",
        "destination_unreachable",
        "Attempts to associate that failed",
        ("destination",),
        None,
    ),
    "sent_bytes": (
        "counter",
        "sent_bytes",
        "Bytes of instances sent to a destination",
        ("destination",),
        None,
    ),
    "send_seconds": (
        "histogram",
        "delivery_duration_seconds",
        "Time of one send to a destination, association set-up included",
        ("destination",),
        SEND_BUCKETS,
    ),
    # Whichever process saw it last is right.
    "up": (
        "gauge",
        "destination_up",
        "1 unless the last attempt to reach the destination failed",
        ("destination",),
        "mostrecent",
    ),
    "last_delivery": (
        "gauge",
        "destination_last_delivery_timestamp_seconds",
        "When the last delivery succeeded (Unix time; 0 = not since start-up)",
        ("destination",),
        "max",
    ),
    "evicted": (
        "counter",
        "connections_evicted",
        "Connections closed before their A-ASSOCIATE-RQ to make room for a new one",
        (),
        None,
    ),
    # Per worker (the cap is per worker): the highest any worker has reached.
    "unassociated_peak": ("gauge", "unassociated_connections_peak",
                          "Most connections without an A-ASSOCIATE-RQ held at once, per process",
                          (), "max"),
    "suppressed": ("counter", "log_lines_suppressed",
                   "Repeated warnings held back by the rate limit (summed up once per interval)",
                   ("logger",), None),
    "units_completed": ("counter", "units_completed",
                        "Collected series and studies completed, by reason (quiet, released, "
                        "max_wait, forced)", ("level", "reason"), None),
    "late_instances": ("counter", "late_instances",
                       "Instances of a series or study already complete, by the late: policy "
                       "applied", ("level", "policy"), None),
    # The fleet mirror runs in the forwarder alone; a dead forwarder's values are dropped.
    "fleet_lag_rows": ("gauge", "fleet_mirror_lag_rows",
                       "Rows of the spool not yet mirrored to the fleet's PostgreSQL",
                       (), "livemostrecent"),
    "fleet_lag_seconds": ("gauge", "fleet_mirror_lag_seconds",
                          "Age of the oldest row not yet mirrored; 0 when the mirror is current",
                          (), "livemostrecent"),
    "fleet_last_success": ("gauge", "fleet_mirror_last_success_timestamp_seconds",
                           "When the mirror last reached PostgreSQL (Unix time)", (), "max"),
    "fleet_failures": ("counter", "fleet_mirror_failures",
                       "Mirror rounds that failed (PostgreSQL slow, down or unreachable)",
                       (), None),
    "deid_withheld": (
        "counter",
        "deidentify_withheld",
        "Instances withheld by a deidentify profile (burned_in: refuse), by profile",
        ("profile",),
        None,
    ),
    # Set by the forwarder's commitment timer alone.
    "commitments_pending": ("gauge", "commitments_pending",
                            "Storage Commitment transactions not yet reported", (), "mostrecent"),
    "commitments_oldest": ("gauge", "commitments_oldest_seconds",
                           "Age of the oldest Storage Commitment transaction not yet reported",
                           (), "mostrecent"),
    "commitments": ("counter", "commitments",
                    "Storage Commitment transactions finished, by outcome (committed, failed, "
                    "abandoned)", ("outcome",), None),
    # answer: relayed; a report is counted by the process that records it.
    "commitment_relays": ("counter", "commitment_relays",
                          "Destinations asked for their own Storage Commitment, by outcome "
                          "(committed, failed, expired; ask_failed per N-ACTION not accepted)",
                          ("outcome",), None),
}


def _instrument(kind: str, name: str, doc: str, labels: tuple[str, ...], extra: Any) -> Any:
    from prometheus_client import Counter, Gauge, Histogram

    if kind == "counter":
        return Counter(PREFIX + name, doc, labels)
    if kind == "histogram":
        return Histogram(PREFIX + name, doc, labels, buckets=extra)
    return Gauge(PREFIX + name, doc, labels, multiprocess_mode=extra)


class Instruments:
    """The metrics of one process; children are cached so a C-STORE costs a few µs."""

    received: Any
    received_bytes: Any
    responses: Any
    rule_matches: Any
    store_seconds: Any
    accepted: Any
    rejected: Any
    active: Any
    deliveries: Any
    retries: Any
    unreachable: Any
    sent_bytes: Any
    send_seconds: Any
    up: Any
    last_delivery: Any
    evicted: Any
    unassociated_peak: Any
    suppressed: Any
    units_completed: Any
    late_instances: Any
    fleet_lag_rows: Any
    fleet_lag_seconds: Any
    fleet_last_success: Any
    fleet_failures: Any
    deid_withheld: Any
    commitments_pending: Any
    commitments_oldest: Any
    commitments: Any
    commitment_relays: Any

    def __init__(self) -> None:
        for attribute, spec in _TABLE.items():
            setattr(self, attribute, _instrument(*spec))
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
            label = next((p for p in self.callers if fnmatchcase(calling_ae, p)), OTHER)
            if len(self.caller_cache) >= _MAX_CALLERS_CACHED:
                self.caller_cache.clear()
            self.caller_cache[calling_ae] = label
        return label

    def store_child(self, caller: str, code: int, rule: str) -> tuple[Any, ...]:
        """The four children one answered C-STORE increments, cached by their labels."""
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


active: Instruments | None = None


def enable(spool: Path, config: Config) -> None:
    """Daemon start-up, before any child starts: a fresh SPOOL/metrics, instruments."""
    global active
    folder = spool / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    _check_multiprocess()
    active = Instruments()
    active.owner = True
    config_applied(config)


def disable_children() -> None:
    """Metrics are off: no child may inherit a PROMETHEUS_MULTIPROC_DIR from our caller."""
    os.environ.pop(ENV, None)
    os.environ.pop(ENV.lower(), None)


def shared_folder() -> str | None:
    """The folder the daemon's processes write metrics to; None when metrics are off."""
    return os.environ.get(ENV) if active is not None else None


def init_process(folder: str | None) -> None:
    """A child (forwarder, worker): write metrics into `folder` (`shared_folder()`), if any.

    Children are forks of a fork server started before the daemon knew its config, so
    the folder comes as an argument, not in the environment they inherited.
    """
    global active
    if folder is None:
        os.environ.pop(ENV, None)
        return
    os.environ[ENV] = folder  # before prometheus_client's first import here
    if active is None:
        _check_multiprocess()
        active = Instruments()


def _check_multiprocess() -> None:
    from prometheus_client import values

    # The value class is chosen when prometheus_client is first imported.
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set")


def queued_destinations(config: Config) -> list[str]:
    """The destinations with a delivery queue (DICOM, STOW-RS).

    Filesystem destinations are written while the C-STORE is answered: no queue, no retry.
    """
    return [n for n, d in config.destinations.items() if isinstance(d, QueuedDestination)]


def config_applied(config: Config) -> None:
    """Create every label set the config names, at zero, so alerts work before any event.

    Call it in each process that receives a config (start-up, reload); safe in any.
    """
    m = active
    if m is None:
        return
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
    for code in {*status.BUILTIN_STATUSES, *_configured_statuses(config)}:
        m.responses.labels(*status_labels(code))
    for reason in REJECT_REASONS:
        m.rejected.labels(reason)
    for logger in RATE_LIMITED_LOGGERS:
        m.suppressed.labels(logger)
    for name in queued_destinations(config):
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


def process_dead(pid: int | None) -> None:
    """A child died: drop its live gauges (its counters keep counting in the sums)."""
    if active is None or pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
