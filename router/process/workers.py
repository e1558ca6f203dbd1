"""Receiving workers: `listen.workers` processes accepting on one port, supervised.

One Python process holds one GIL, and pynetdicom's receive path is CPU-bound: with
several senders at once a single process saturates one core. So, as gunicorn's arbiter
does, the main process keeps the spool, the forwarder, reloads and systemd, and spawns N
workers that each bind the listening port with SO_REUSEPORT (the kernel spreads
connections over them) and run an SCP, a pipeline and a journal of their own:

- the main process binds the port first, without listening, so that a port in use is a
  start-up error and port 0 resolves to one port for all;
- a worker says "listening" on its pipe; READY=1 comes when every worker has said it;
- a reloaded config goes to every worker; SIGTERM (systemd sends it to every process)
  makes each drain; a worker that dies is logged, its half-received files removed and
  its slot of the shared association count reset, and it is started again;
- `max_associations` is the total over workers: a shared array holds each worker's count;
- workers hold a shared lock on `spool/workers.lock`; a new main process takes it
  exclusively before recovering the spool, so no worker of a killed daemon is still
  writing when the spool is cleaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from router.actions.forwarding import SpoolForwarding
from router.actions.pipeline import Pipeline
from router.errors import StartupError
from router.net.admission import Budget
from router.net.setup import configure_pynetdicom
from router.net.tls import tls_context
from router.observe import logs, metrics
from router.process import forkserver
from router.receive.scp import StorageSCP
from router.rules.ruleset import LoadedConfig, Shipped, load_shipped
from router.spool.database import Spool
from router.spool.journal import Journal

log = logging.getLogger("router.daemon")

START_SECONDS = 30.0  # a worker that is not listening by then is a start-up failure
DRAIN_SECONDS = 10.0  # in-flight associations get this long after SIGTERM, then abort
_PR_SET_PDEATHSIG = 1


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) the port with SO_REUSEPORT: it is ours, and port 0 is resolved."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


class WorkerPool:
    """The main process's handle on its receiving workers."""

    def __init__(self, n: int, spool: Path, port: int, log_format: str, debug: bool) -> None:
        # A fork server imports the receiving modules once; each worker (and a restarted
        # one) is then a fork of that thread-free process: no per-worker import time.
        self._ctx = forkserver.children()
        self.n = n
        self._spool = spool
        self.port = port
        self._log_format = log_format
        self._debug = debug
        self._counts = self._ctx.Array("i", n)
        self._procs: list[Any] = [None] * n
        self._conns: list[Connection | None] = [None] * n
        self._config: Shipped | None = None
        self.restarts = 0

    def start(self, loaded: LoadedConfig) -> None:
        """Spawn every worker and wait until each listens (StartupError otherwise)."""
        self._config = loaded.shipped()
        for slot in range(self.n):
            self._spawn(slot)
        for slot in range(self.n):
            self._wait_listening(slot)

    def _spawn(self, slot: int) -> None:
        assert self._config is not None
        parent_end, child_end = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main,
            name=f"dicom-router-worker-{slot}",
            args=(
                slot,
                str(self._spool),
                self.port,
                self._config,
                child_end,
                self._counts,
                self._log_format,
                self._debug,
                metrics.shared_folder(),
            ),
        )
        forkserver.start_fork_server()
        proc.start()
        child_end.close()
        self._procs[slot], self._conns[slot] = proc, parent_end
        with self._counts.get_lock():
            self._counts[slot] = 0

    def _wait_listening(self, slot: int) -> None:
        conn = self._conns[slot]
        assert conn is not None
        try:
            message = conn.recv() if conn.poll(START_SECONDS) else ("failed", "no answer")
        except (EOFError, OSError):
            message = ("failed", f"exited with code {self._procs[slot].exitcode}")
        if message[0] != "listening":
            self.stop(5.0)
            raise StartupError(f"receiving worker {slot} did not start: {message[1]}")

    def pids(self) -> list[int]:
        """The worker processes' IDs (those alive)."""
        return [p.pid for p in self._procs if p is not None and p.is_alive()]

    def update(self, loaded: LoadedConfig) -> None:
        """Hand a reloaded config to every worker."""
        self._config = loaded.shipped()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                if conn is not None:
                    conn.send(("config", self._config))

    def check(self) -> None:
        """Restart any worker that died (logged), after removing what it left half-done."""
        for slot, proc in enumerate(self._procs):
            if proc is None or proc.is_alive():
                continue
            log.error(
                "receiving worker %d (pid %d) exited (code %s): restarting",
                slot,
                proc.pid,
                proc.exitcode,
                extra={"event": "worker-restarted"},
            )
            metrics.process_dead(proc.pid)
            for stale in (self._spool / "incoming").glob(f"{proc.pid}-*"):
                stale.unlink(missing_ok=True)
            self.restarts += 1
            self._spawn(slot)

    def stop(self, timeout: float) -> None:
        """Ask every worker to drain and exit; kill what is left after `timeout`."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                if conn is not None:
                    conn.send(("stop",))
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(5)
        self._procs = [None] * self.n


def _die_with_parent() -> None:
    """Get SIGTERM (and so drain) when the fork server dies: it exits with the main process."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main(
    slot: int,
    spool_root: str,
    port: int,
    config: Shipped,
    conn: Connection,
    counts: Any,
    log_format: str,
    debug: bool,
    metrics_folder: str | None,
) -> None:
    """Entry point of a receiving worker."""
    forkserver.name_process(f"dr-worker-{slot}")
    _die_with_parent()
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup(log_format, debug)
    metrics.init_process(metrics_folder)
    spool = Path(spool_root)
    lock = os.open(spool / "workers.lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        receiver = _Receiver(spool, load_shipped(config), Budget(counts, slot, 0), port)
    except StartupError as exc:
        conn.send(("failed", str(exc)))
        return
    metrics.config_applied(receiver.loaded.config)
    conn.send(("listening", os.getpid()))
    while not stop.is_set() and os.getppid() == parent:
        try:
            message: tuple[Any, ...] = conn.recv() if conn.poll(0.5) else ("idle",)
        except (EOFError, OSError):
            break
        if message[0] == "stop":
            break
        if message[0] == "config":
            receiver.loaded = load_shipped(message[1])
            metrics.config_applied(receiver.loaded.config)
    receiver.shutdown()


class _Receiver:
    """One worker's SCP, pipeline and journal, reading `loaded` for every C-STORE."""

    def __init__(self, spool: Path, loaded: LoadedConfig, budget: Budget, port: int) -> None:
        configure_pynetdicom(spool / "incoming")
        self.loaded = loaded
        listen = loaded.config.listen.model_copy(update={"port": port})
        budget.limit = listen.max_associations
        db = Spool(spool)
        self.journal = Journal(db)
        self.journal.start()
        self.forwarding = SpoolForwarding(db, lambda: self.loaded)
        pipeline = Pipeline(lambda: self.loaded, self.forwarding, spool / "work", self.journal)
        tls = tls_context(listen.tls, loaded.resolve) if listen.tls else None
        self.scp = StorageSCP(
            listen,
            pipeline,
            lambda: self.loaded.config,
            tls,
            self.journal,
            reuse_port=True,
            budget=budget,
        )
        self.scp.start()

    def shutdown(self) -> None:
        """Stop accepting, drain in-flight associations (bounded), write the journal."""
        self.scp.stop_accepting()
        if not self.scp.drain(DRAIN_SECONDS):
            log.warning("associations still open after %.0f s: aborting them", DRAIN_SECONDS)
            self.scp.abort_all()
            self.scp.drain(5.0)
        self.forwarding.close()  # sync forwarding's open associations
        self.journal.stop()
