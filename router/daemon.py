"""The daemon: start-up, the main loop (reloads, watchdog), and graceful shutdown.

Signal handlers and the rule-file watcher only write a byte to a pipe (a handler must not
take a lock the main thread may hold); the main loop reads it and does the work.
The current rules live in one reference (`current()`), swapped whole by a reload, so a
C-STORE uses the rules that were current when it arrived.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from router.actions import Pipeline
from router.delivery import ForwarderProcess, SpoolForwarding
from router.errors import ConfigError, OutOfResources, StartupError
from router.loader import LoadedConfig, load
from router.reload import RuleFileWatcher
from router.scp import StorageSCP, configure_pynetdicom, tls_context
from router.spool import Spool
from router.systemd import Notifier

log = logging.getLogger("router.daemon")

# SIGTERM: associations get DRAIN_SECONDS, then are aborted (5 s to wind down); the
# forwarder finishes the instance in hand. At most 35 s: the unit's TimeoutStopSec is 45 s.
DRAIN_SECONDS = 10.0
FORWARDER_STOP_SECONDS = 20.0
_WORDS = {"stop": b"s", "reload": b"r"}  # in-flight associations get this long after SIGTERM


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
        self.forwarder: ForwarderProcess | None = None
        self._forwarding: SpoolForwarding | None = None
        self._watch = watch and loaded.path.exists()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.notifier = Notifier()
        # Only this process may notify systemd: the forwarder must not inherit the socket.
        Notifier.unset_environment(os.environ)
        self.failed_reloads = 0
        self.scp: StorageSCP | None = None
        self._watcher: RuleFileWatcher | None = None

    def current(self) -> LoadedConfig:
        """The rules in force now."""
        return self._loaded

    def startup(self) -> None:
        """Lock and recover the spool, bind the listener, start the forwarder; then READY=1."""
        loaded = self._loaded
        spool = loaded.spool
        spool_db = self._recover_spool(spool)
        # pynetdicom receives into tempfile's folder: on the spool's filesystem, a
        # received file is then linked into place, never copied.
        tempfile.tempdir = str(spool / "incoming")
        configure_pynetdicom()
        listen = loaded.config.listen
        tls = tls_context(listen.tls, loaded.resolve) if listen.tls else None
        self._forwarding = SpoolForwarding(spool_db, self.current)
        pipeline = Pipeline(self.current, self._forwarding, spool / "work", spool_db)
        self.scp = StorageSCP(listen, pipeline, lambda: self._loaded.config, tls)
        self.forwarder = ForwarderProcess(spool, self._log_format, self._debug)
        self.forwarder.start(loaded)
        self.scp.start()
        if self._watch:
            self._watcher = RuleFileWatcher(loaded.path, lambda: self.request("reload"))
            self._watcher.start()
        log.info(
            "listening on %s:%d as %s, config %s version %s",
            listen.host,
            self.scp.port,
            listen.ae_title,
            loaded.path,
            loaded.version,
            extra={"event": "started", "config_version": loaded.version},
        )
        self.notifier.ready(f"listening on port {self.scp.port}, config {loaded.version}")

    def _recover_spool(self, spool: Path) -> Spool:
        """Take the spool's lock and clear what a crashed run left that was never acked."""
        try:
            spool.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(spool / "lock", os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StartupError(f"spool {spool} is in use by another dicom-router") from None
            for name in ("incoming", "work"):
                folder = spool / name
                folder.mkdir(exist_ok=True)
                for stale in folder.iterdir():  # partial receives, modify outputs
                    stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale)
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
        """Ask the main loop to 'reload' or 'stop'; safe from signal handlers and threads."""
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
                self.reload()
            if self.forwarder is not None:
                self.forwarder.check()
            self.notifier.watchdog()

    def _file_changed(self) -> bool:
        signature = _signature(self._loaded.path)
        changed = signature != self._seen
        self._seen = signature
        return changed and self._watch

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
                return self._refuse(new.fixture_failures)
            if new.version == old.version:
                return True
            for key in _restart_only(old, new):
                log.warning("%s changed: it takes effect on restart", key)
            self._loaded = new
            if self.forwarder is not None:
                self.forwarder.update(new)
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

    def _refuse(self, problems: Sequence[object]) -> bool:
        self.failed_reloads += 1
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
        if self._watcher:
            self._watcher.stop()
        if self.scp:
            self.scp.stop_accepting()
            start = time.monotonic()
            if not self.scp.drain(DRAIN_SECONDS):
                log.warning("associations still open after %.0f s: aborting them", DRAIN_SECONDS)
                self.scp.abort_all()
                self.scp.drain(5.0)
            log.info("stopped after %.1f s drain", time.monotonic() - start)
        if self._forwarding is not None:
            self._forwarding.close()  # sync forwarding's open associations
        if self.forwarder is not None:
            self.forwarder.stop(timeout=FORWARDER_STOP_SECONDS)


def _restart_only(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Keys whose change needs a restart: the listener's settings and the spool."""
    changed = [
        f"listen.{name}"
        for name in type(old.config.listen).model_fields
        if getattr(old.config.listen, name) != getattr(new.config.listen, name)
    ]
    if old.spool != new.spool:
        changed.append("spool")
    return changed


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one read: inode, size, mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
