"""The daemon's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

`/metrics` sums every process's instruments (prometheus-client's MultiProcessCollector
over `SPOOL/metrics`, see `router.observe.metrics`) and adds what only the daemon knows, read at
scrape time: config version, reloads, spool space, and per destination the queue depth,
dead letters and age of the oldest pending instance (one short read-only SQLite query).
Bounded: at most MAX_CLIENTS connections are served at once, each for at most
CLIENT_TIMEOUT seconds; more are closed unanswered.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from router.errors import StartupError
from router.observe.fleet import status as fleet_status
from router.observe.instruments import PREFIX, queued_destinations
from router.rules.ruleset import LoadedConfig
from router.spool.stats import QueueStats, queue_stats, studies_stats

log = logging.getLogger("router.exporter")

MAX_CLIENTS = 8
CLIENT_TIMEOUT = 10.0
STALE_LOOP = 30.0  # /healthz fails when the main loop has not ticked for this long


@dataclass
class ReloadStats:
    """The daemon's reload history, as `/metrics` reports it."""

    succeeded: int = 0
    failed: int = 0
    last_success: float = 0.0  # Unix time; start-up counts as a good load
    last_ok: bool = True
    failed_fixtures: int = 0  # fixtures failing in the last refused reload
    errors: list[str] = field(default_factory=list)  # the last refused reload's (status page)

    def record(self, ok: bool, failed_fixtures: int = 0, errors: Iterable[str] = ()) -> None:
        """Note one reload attempt."""
        if ok:
            self.succeeded += 1
            self.last_success = time.time()
            self.failed_fixtures = 0
        else:
            self.failed += 1
            self.failed_fixtures = failed_fixtures
        self.errors = list(errors)
        self.last_ok = ok


class Monitored(Protocol):
    """What the exporter reads from the daemon."""

    accepting: bool  # the listener accepts associations
    last_tick: float  # time.monotonic() of the main loop's last turn
    reloads: ReloadStats

    def current(self) -> LoadedConfig:
        """The rules in force now."""


class RouterCollector:
    """Scrape-time metrics of the daemon process."""

    def __init__(self, daemon: Monitored) -> None:
        self._daemon = daemon

    def describe(self) -> list[Any]:
        """Nothing up front: registering must not run a scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """Config, reloads, spool space, queues."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        loaded = self._daemon.current()
        reloads = self._daemon.reloads
        yield InfoMetricFamily(
            PREFIX + "config", "The config version in force", {"version": loaded.version}
        )
        counter = CounterMetricFamily(
            PREFIX + "reloads", "Reload attempts (file change, SIGHUP)", labels=["result"]
        )
        counter.add_metric(["success"], reloads.succeeded)
        counter.add_metric(["failure"], reloads.failed)
        yield counter
        yield GaugeMetricFamily(
            PREFIX + "config_last_reload_successful",
            "1 when the last reload was applied (or changed nothing), 0 when refused",
            int(reloads.last_ok),
        )
        yield GaugeMetricFamily(
            PREFIX + "config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (start-up or reload)",
            reloads.last_success,
        )
        yield GaugeMetricFamily(
            PREFIX + "config_failed_fixtures",
            "Fixtures (tests:) failing in the last refused reload; 0 after a good one",
            reloads.failed_fixtures,
        )
        yield from _spool_metrics(loaded)


def _spool_metrics(loaded: LoadedConfig) -> Iterable[Any]:
    from prometheus_client.core import GaugeMetricFamily

    root = loaded.spool
    try:
        st = os.statvfs(root)
        free: float = st.f_bavail * st.f_frsize
    except OSError:
        free = 0.0
    yield GaugeMetricFamily(
        PREFIX + "spool_free_bytes", "Free space of the spool's filesystem (for us)", free
    )
    yield GaugeMetricFamily(
        PREFIX + "spool_min_free_bytes",
        "spool_min_free: below it every new instance gets 0xA700",
        loaded.config.spool_min_free,
    )
    names = queued_destinations(loaded.config)
    try:
        stats = queue_stats(root, names)
    except Exception as exc:  # a scrape reports what it can; the queue is not ours to fix
        log.warning("cannot read the queue for /metrics: %s", exc)
        stats = {}
    families = {
        "pending": GaugeMetricFamily(
            PREFIX + "queue_pending", "Deliveries waiting, per destination", labels=["destination"]
        ),
        "dead": GaugeMetricFamily(
            PREFIX + "queue_dead_letters",
            "Dead letters in the spool (until `queue retry` or `queue purge`)",
            labels=["destination"],
        ),
        "age": GaugeMetricFamily(
            PREFIX + "queue_oldest_pending_age_seconds",
            "Age of the oldest pending delivery's instance; 0 when none is pending",
            labels=["destination"],
        ),
    }
    now = time.time()
    for name in names:  # a removed destination's leftovers: `dicom-router queue`
        q = stats.get(name, QueueStats())
        families["pending"].add_metric([name], q.pending)
        families["dead"].add_metric([name], q.dead_letters)
        age = max(0.0, now - q.oldest_pending) if q.oldest_pending is not None else 0.0
        families["age"].add_metric([name], age)
    yield from families.values()
    yield from _studies_metrics(root, now)


def _studies_metrics(root: Path, now: float) -> Iterable[Any]:
    """Studies being collected (collect, notify) and the oldest one's age."""
    from prometheus_client.core import GaugeMetricFamily

    try:
        collecting, first = studies_stats(root)
    except Exception as exc:  # a scrape reports what it can
        log.warning("cannot read the studies for /metrics: %s", exc)
        return
    yield GaugeMetricFamily(
        PREFIX + "studies_collecting", "Studies whose instances are being collected", collecting
    )
    yield GaugeMetricFamily(
        PREFIX + "studies_oldest_collecting_age_seconds",
        "Time since the first instance of the oldest study still collecting; 0 when none",
        max(0.0, now - first) if first is not None else 0.0,
    )


def readiness(daemon: Monitored) -> str | None:
    """None when ready for traffic, else why not."""
    if not daemon.accepting:
        return "not accepting associations"
    loaded = daemon.current()
    incoming = loaded.spool / "incoming"
    try:
        with tempfile.TemporaryFile(dir=incoming):
            pass
        st = os.statvfs(incoming)
    except OSError as exc:
        return f"spool not writable: {exc.strerror or exc}"
    free = st.f_bavail * st.f_frsize
    if free < loaded.config.spool_min_free:
        return (
            f"spool has {free // 2**20} MiB free, below spool_min_free"
            f" ({loaded.config.spool_min_free // 2**20} MiB)"
        )
    return None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _app(daemon: Monitored, pages: WSGIApp | None) -> WSGIApp:
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    class Collector(multiprocess.MultiProcessCollector):
        """prometheus-client's, without the files a child has created but not yet sized.

        A child's value file exists empty between its `open` and its `truncate`; read
        then (or forever, if the child was killed in between) it would fail the scrape.
        """

        def collect(self) -> Any:
            files = glob.glob(os.path.join(self._path, "*.db"))
            return self.merge(  # type: ignore[no-untyped-call]
                [f for f in files if _sized(f)], accumulate=True
            )

    registry = CollectorRegistry()
    Collector(registry)  # type: ignore[no-untyped-call]
    registry.register(RouterCollector(daemon))
    metrics_app = make_wsgi_app(registry)

    def text(start: Callable[..., Any], code: str, body: str) -> list[bytes]:
        start(code, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode() + b"\n"]

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                result: list[bytes] = metrics_app(environ, start)
            except Exception as exc:  # one line, not wsgiref's traceback on stderr
                log.warning("/metrics failed: %s: %s", type(exc).__name__, exc)
                return text(start, "500 Internal Server Error", "metrics failed: see the log")
            return result
        if path == "/healthz":
            stale = time.monotonic() - daemon.last_tick
            if stale > STALE_LOOP:
                return text(start, "503 Service Unavailable", f"main loop stuck for {stale:.0f} s")
            return text(start, "200 OK", "ok")
        if path == "/readyz":
            why = readiness(daemon)
            # The fleet mirror is a detail, never a reason: PostgreSQL is not in the C-STORE path.
            loaded = daemon.current()
            more = f"\n{fleet_status.detail(loaded.spool)}" if loaded.config.fleet else ""
            if why:
                return text(start, "503 Service Unavailable", f"not ready: {why}{more}")
            return text(start, "200 OK", f"ready{more}")
        if pages is not None:  # the status pages, bounded by their own slots (router.web)
            return pages(environ, start)
        return text(start, "404 Not Found", "try /metrics, /healthz or /readyz")

    return app


def _sized(path: str) -> bool:
    """True once a value file holds at least its 8-byte header."""
    try:
        return os.stat(path).st_size >= 8
    except OSError:  # removed since the listing (a dead child's live gauges)
        return False


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT  # a silent client is dropped, its thread freed

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: close it rather than queue it
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Exporter:
    """The HTTP server in a daemon thread."""

    def __init__(
        self, host: str, port: int, daemon: Monitored, pages: WSGIApp | None = None
    ) -> None:
        class Server(_Server):
            slots = threading.BoundedSemaphore(MAX_CLIENTS)
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self.server = make_server(
                host, port, _app(daemon, pages), server_class=Server, handler_class=_Handler
            )
        except OSError as exc:
            raise StartupError(f"metrics: cannot listen on {host}:{port}: {exc}") from exc
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve until `stop()`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
