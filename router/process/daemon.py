"""The daemon: start-up, the main loop (reloads, watchdog), and graceful shutdown.

Signal handlers and the rule-file watcher only write a byte to a pipe (a handler must not
take a lock the main thread may hold); the main loop reads it and does the work.
The current rules live in one reference (`current()`), swapped whole by a reload, so a
C-STORE uses the rules that were current when it arrived.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from router.errors import ConfigError, OutOfResources, StartupError
from router.observe import metrics
from router.observe.exporter import Exporter, ReloadStats
from router.process.children import ChildProcess, Settings
from router.process.forkserver import default_workers
from router.process.forwarder import forwarder_process
from router.process.portclaim import claim_port
from router.process.reload import RuleFileWatcher
from router.process.systemd import Notifier
from router.process.workers import WorkerPool, reserve_port
from router.receive.stack import ABORT_SECONDS, DRAIN_SECONDS, ReceiveStack
from router.rules.ruleset import LoadedConfig, load
from router.spool import layout
from router.spool.database import Spool
from router.web.server import Pages

log = logging.getLogger("router.daemon")

# SIGTERM: associations get DRAIN_SECONDS, then are aborted (ABORT_SECONDS to wind
# down), the receiving workers WORKER_EXIT_SECONDS more to exit; then the forwarder
# finishes the instance in hand, in at most FORWARDER_STOP_SECONDS. At most 38 s in all
# (docs/operations.md#stopping says so): the unit's TimeoutStopSec is 45 s.
WORKER_EXIT_SECONDS = 3.0
FORWARDER_STOP_SECONDS = 20.0
# What signal handlers and the rule-file watcher write to the main loop's wake-up pipe:
# SIGHUP's "reload" always reloads; the watcher's "changed" only when the file differs
# from the one last read (the watcher and the stat check see the same edit).
_WORDS = {"stop": b"s", "reload": b"r", "changed": b"c"}


class Daemon:
    """One running router: `startup()`, `run()` until SIGTERM/SIGINT, `shutdown()`."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        watch: bool = True,
        log_format: str = "text",
        debug: bool = False,
    ) -> None:
        self._loaded = loaded
        self._seen = _signature(loaded.path)
        self._log_format = log_format
        self._debug = debug
        self.forwarder: ChildProcess[None] | None = None
        self._watch = watch and loaded.path.exists()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.notifier = Notifier()
        # Only this process may notify systemd: the forwarder must not inherit the socket.
        Notifier.unset_environment(os.environ)
        self.failed_reloads = 0
        self._refused = False  # the last reload attempt was refused
        self.stack: ReceiveStack | None = None  # with one receiving process: this one
        self.pool: WorkerPool | None = None
        self._reserved: socket.socket | None = None
        self._claim: socket.socket | None = None  # the port is ours: see portclaim
        self._watcher: RuleFileWatcher | None = None
        self.exporter: Exporter | None = None
        self.accepting = False  # read by /readyz
        self.last_tick = time.monotonic()  # read by /healthz
        self.reloads = ReloadStats(last_success=time.time())

    def current(self) -> LoadedConfig:
        """The rules in force now."""
        return self._loaded

    def startup(self) -> None:
        """Lock and recover the spool, bind the listener, start the forwarder; then READY=1."""
        loaded = self._loaded
        spool = loaded.spool
        spool_db = self._recover_spool(spool)
        # Before any child starts: each gets the metrics folder (or None) as an argument.
        if loaded.config.metrics:
            metrics.enable(spool, loaded.config)
            # Bound before the DICOM port: once that listens, /metrics answers too.
            self.exporter = Exporter(
                loaded.config.metrics.host, loaded.config.metrics.port, self, self._pages(loaded)
            )
        else:
            metrics.disable_children()
        listen = loaded.config.listen
        # Before any bind: the workers' SO_REUSEPORT would let a second daemon share it.
        self._claim = claim_port(listen.host, listen.port)
        settings = Settings(spool, self._log_format, self._debug, metrics.shared_folder())
        self.forwarder = forwarder_process(settings)
        shipped = loaded.shipped()
        workers = listen.workers or default_workers()
        if workers == 1:
            self.stack = ReceiveStack(spool_db, self.current)
            self.stack.start()
            self.forwarder.start(shipped)  # may wait for the fork server's imports to end
            port = self.stack.port
        else:
            self._reserved = reserve_port(listen.host, listen.port)
            port = int(self._reserved.getsockname()[1])
            self.pool = WorkerPool(workers, settings, port)
            self.forwarder.start(shipped)
            self.pool.start(shipped)
        self.accepting = True
        if self.exporter is not None:
            self.exporter.start()
        if self._watch:
            self._watcher = RuleFileWatcher(loaded.path, lambda: self.request("changed"))
            self._watcher.start()
        log.info(
            "listening on %s:%d as %s, %d worker%s, config %s version %s",
            listen.host,
            port,
            listen.ae_title,
            workers,
            "" if workers == 1 else "s",
            loaded.path,
            loaded.version,
            extra={"event": "started", "config_version": loaded.version},
        )
        _log_warnings(loaded)
        self.notifier.ready(f"listening on port {port}, config {loaded.version}")

    def _pages(self, loaded: LoadedConfig) -> Pages | None:
        """The status pages (router.web) when `metrics: pages` is on."""
        settings = loaded.config.metrics
        if settings is None or not settings.pages_on:
            return None
        users = loaded.resolve(settings.users_file) if settings.users_file else None
        tokens = loaded.resolve(settings.token_file) if settings.token_file else None
        try:
            return Pages(self, users, loaded.config.listen.workers or default_workers(), tokens)
        except (OSError, ValueError) as exc:
            raise StartupError(f"metrics: users_file/token_file: {exc}") from exc

    def _recover_spool(self, spool: Path) -> Spool:
        """Take the spool's lock and clear what a crashed run left that was never acked."""
        try:
            self._lock_fd = layout.recover(spool, workers_timeout=2 * DRAIN_SECONDS + 10)
            spool_db = Spool(spool)
            spool_db.collect_garbage(grace=0)  # files linked before their rows were committed
        except (OSError, OutOfResources) as exc:
            raise StartupError(f"spool {spool}: {exc}") from exc
        return spool_db

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; the handlers only enqueue."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.request("reload" if signum == signal.SIGHUP else "stop")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, handler)

    def request(self, word: str) -> None:
        """Ask the main loop to 'reload', 'stop' or look at the 'changed' file; signal-safe."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, _WORDS[word])

    def run(self) -> None:
        """The main loop: reloads and watchdog pings until asked to stop."""
        tick = min(self.notifier.watchdog_interval or 1.0, 1.0)
        while True:
            ready, _, _ = select.select([self._wake_r], [], [], tick)
            words = os.read(self._wake_r, 512) if ready else b""
            if _WORDS["stop"] in words:
                return
            # The stat check backs up the watcher: it covers an edit saved before the
            # watcher was armed, and filesystems without inotify.
            if _WORDS["reload"] in words or self._file_changed():
                self.reload()  # one attempt per SIGHUP or edit: the watcher only wakes us
            if self.forwarder is not None:
                self.forwarder.check()
            if self.pool is not None:
                self.pool.check()
            self.notifier.watchdog()
            self.last_tick = time.monotonic()

    def _file_changed(self) -> bool:
        """The file differs from the one the last reload attempt read (when watching)."""
        return self._watch and _signature(self._loaded.path) != self._seen

    def reload(self) -> bool:
        """Load, validate and test the rule file; swap it in only if all is well."""
        old = self._loaded
        self._seen = _signature(old.path)
        self.notifier.reloading()
        try:
            try:
                new = load(old.path)
            except ConfigError as exc:
                return self._refuse(exc.problems)
            if new.fixture_failures:
                return self._refuse(new.fixture_failures, len(new.fixture_failures))
            self.reloads.record(ok=True)
            if new.version == old.version:
                self._log_unchanged(new)
                return True
            self._refused = False
            for key in _restart_only(old, new):
                log.warning("%s changed: it takes effect on restart", key)
            _log_warnings(new)
            self._loaded = new
            metrics.config_applied(new.config)  # before the forwarder gets it: see metrics.up
            shipped = new.shipped()
            if self.forwarder is not None:
                self.forwarder.update(shipped)
            if self.pool is not None:
                self.pool.update(shipped)
            log.info(
                "reloaded %s: config version %s (was %s)",
                new.path,
                new.version,
                old.version,
                extra={"event": "reloaded", "config_version": new.version},
            )
            return True
        finally:
            self.notifier.ready(
                f"config {self._loaded.version}, {self.failed_reloads} failed reloads"
            )

    def _log_unchanged(self, loaded: LoadedConfig) -> None:
        """The outcome of a reload that read the version in force: unchanged, or back to it."""
        outcome = "is back to" if self._refused else "unchanged,"
        log.info(
            "reload: %s %s config version %s",
            loaded.path,
            outcome,
            loaded.version,
            extra={"event": "reload-unchanged", "config_version": loaded.version},
        )
        self._refused = False

    def _refuse(self, problems: Sequence[object], failed_fixtures: int = 0) -> bool:
        self.failed_reloads += 1
        self._refused = True
        self.reloads.record(
            ok=False, failed_fixtures=failed_fixtures, errors=[str(p) for p in problems]
        )
        for problem in problems:
            log.error("%s", problem, extra={"event": "reload-failed"})
        log.error(
            "reload refused, keeping config version %s (%d failed reloads)",
            self._loaded.version,
            self.failed_reloads,
            extra={"event": "reload-failed", "failed_reloads": self.failed_reloads},
        )
        return False

    def shutdown(self) -> None:
        """Stop accepting, let in-flight C-STOREs finish (bounded), then stop."""
        self.notifier.stopping()
        self.accepting = False
        if self._watcher:
            self._watcher.stop()
        start = time.monotonic()
        if self.stack is not None:
            self.stack.drain()
            log.info("stopped after %.1f s drain", time.monotonic() - start)
        if self.pool is not None:
            # Each worker drains its stack on its own (systemd also sends it SIGTERM); then
            # time for the A-ABORTs to go out and the worker to exit.
            self.pool.stop(timeout=DRAIN_SECONDS + ABORT_SECONDS + WORKER_EXIT_SECONDS)
            log.info("stopped after %.1f s drain", time.monotonic() - start)
        if self._reserved is not None:
            self._reserved.close()
        if self.forwarder is not None:
            self.forwarder.stop(timeout=FORWARDER_STOP_SECONDS)
        if self.exporter is not None:
            self.exporter.stop()
        if self._claim is not None:
            self._claim.close()


def _restart_only(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Keys whose change needs a restart: the listener's settings and the spool."""
    changed = [
        f"listen.{name}"
        for name in type(old.config.listen).model_fields
        if getattr(old.config.listen, name) != getattr(new.config.listen, name)
    ]
    if old.spool != new.spool:
        changed.append("spool")
    if old.config.metrics != new.config.metrics:
        changed.append("metrics")
    return changed


def _log_warnings(loaded: LoadedConfig) -> None:
    """What `check` warns about: logged, never refused."""
    for warning in loaded.warnings:
        log.warning("%s", warning, extra={"event": "config-warning"})


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one read: inode, size, mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
