"""The forwarder process: every queued delivery is sent from here, and the daemon's handle on it.

pynetdicom's network layer is CPU-bound and receive and send would compete for one GIL,
so queued forwards are sent by a separate process (a fork of the thread-free fork
server, `router.process.forkserver`: it shares nothing but the spool). The daemon sends it
each new config after a reload and restarts it if it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from router.destinations.registry import Forwarder
from router.net.setup import configure_pynetdicom
from router.observe import logs, metrics
from router.process import forkserver
from router.rules.ruleset import LoadedConfig, Shipped, load_shipped
from router.spool.database import Spool

log = logging.getLogger("router.forward")

PRUNE_AFTER = 30 * 86400  # delivered rows are kept this long for `trace`


def forwarder_main(
    spool_root: str,
    config: Shipped,
    conn: Connection,
    log_format: str,
    debug: bool,
    metrics_folder: str | None,
) -> None:
    """Entry point of the forwarder process."""
    forkserver.name_process("dr-forwarder")
    logs.setup(log_format, debug)
    metrics.init_process(metrics_folder)
    configure_pynetdicom(Path(spool_root) / "incoming")
    stop = threading.Event()
    # SIGTERM reaches the whole cgroup under systemd: finish the instance in hand, exit.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parent = os.getppid()
    # Enqueues must survive a power cut (the daemon commits them with FULL sync); a lost
    # "delivered" mark only means one more send (at-least-once), so no fsync per delivery.
    spool = Spool(Path(spool_root), synchronous="NORMAL")
    forwarder = Forwarder(spool)
    forwarder.apply(load_shipped(config))
    last_prune = 0.0
    while not stop.is_set() and os.getppid() == parent:
        try:
            message: tuple[Any, ...] = conn.recv() if conn.poll(0.2) else ("idle",)
        except (EOFError, OSError):
            break  # the daemon is gone
        if message[0] == "stop":
            break
        if message[0] == "config":
            forwarder.apply(load_shipped(message[1]))
        if time.time() - last_prune > 3600:
            spool.prune(time.time() - PRUNE_AFTER)
            last_prune = time.time()
    forwarder.stop(timeout=15)


class ForwarderProcess:
    """The daemon's handle on the forwarder process."""

    def __init__(self, spool_root: Path, log_format: str, debug: bool) -> None:
        self._ctx = forkserver.children()  # a fork of the fork server, as the workers are
        self._spool_root = spool_root
        self._log_format = log_format
        self._debug = debug
        self._proc: Any = None
        self._conn: Connection | None = None
        self._config: Shipped | None = None

    def start(self, loaded: LoadedConfig) -> None:
        """Spawn the process with the current config."""
        self._config = loaded.shipped()
        parent_end, child_end = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=forwarder_main,
            name="dicom-router-forwarder",
            args=(
                str(self._spool_root),
                self._config,
                child_end,
                self._log_format,
                self._debug,
                metrics.shared_folder(),
            ),
        )
        forkserver.start_fork_server()
        self._proc.start()
        child_end.close()
        self._conn = parent_end

    def update(self, loaded: LoadedConfig) -> None:
        """Hand a reloaded config to the process."""
        self._config = loaded.shipped()
        try:
            if self._conn is not None:
                self._conn.send(("config", self._config))
        except OSError:
            pass  # dead: `check()` restarts it with this config

    def check(self) -> None:
        """Restart the process if it died."""
        if self._proc is not None and not self._proc.is_alive() and self._config:
            log.error("forwarder process exited (code %s): restarting", self._proc.exitcode)
            metrics.process_dead(self._proc.pid)
            self.start(load_shipped(self._config))

    def stop(self, timeout: float) -> None:
        """Ask the process to finish the instances in hand and exit (bounded)."""
        if self._proc is None:
            return
        try:
            if self._conn is not None:
                self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = None
