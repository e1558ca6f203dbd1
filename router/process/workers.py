"""Receiving workers: `listen.workers` processes accepting on one port, supervised.

One Python process holds one GIL, and pynetdicom's receive path is CPU-bound: with
several senders at once a single process saturates one core. So, as gunicorn's arbiter
does, the main process keeps the spool, the forwarder, reloads and systemd, and spawns N
workers that each bind the listening port with SO_REUSEPORT (the kernel spreads
connections over them) and run a receive stack of their own (`router.receive.stack`):

- the main process binds the port first, without listening, so that a port in use is a
  start-up error and port 0 resolves to one port for all; before that it claims the port
  (`router.process.portclaim`), as SO_REUSEPORT would let another daemon share it;
- a worker says `Listening` on its pipe (`router.process.children`); READY=1 comes when
  every worker has said it;
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
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from router.errors import StartupError
from router.net.admission import Budget
from router.observe import metrics
from router.process import forkserver
from router.process.children import (
    ChildProcess,
    Failed,
    Launch,
    Listening,
    Settings,
    enter,
)
from router.receive.stack import ReceiveStack
from router.rules.ruleset import Shipped, load_shipped
from router.spool.database import Spool

log = logging.getLogger("router.daemon")

START_SECONDS = 30.0  # a worker that is not listening by then is a start-up failure
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


@dataclass(frozen=True)
class Seat:
    """A receiving worker's own part of its `Launch`."""

    slot: int
    port: int  # reserved by the main process
    counts: Any  # the shared association count of every worker (a multiprocessing Array)


class WorkerPool:
    """The main process's handle on its receiving workers."""

    def __init__(self, n: int, settings: Settings, port: int) -> None:
        # A fork server imports the receiving modules once; each worker (and a restarted
        # one) is then a fork of that thread-free process: no per-worker import time.
        self._incoming = settings.spool / "incoming"
        self._counts = forkserver.children().Array("i", n)
        self._workers = [
            ChildProcess(
                worker_main,
                f"dicom-router-worker-{slot}",
                settings,
                Seat(slot, port, self._counts),
                on_death=partial(self._died, slot),
            )
            for slot in range(n)
        ]

    def start(self, config: Shipped) -> None:
        """Spawn every worker and wait until each listens (StartupError otherwise)."""
        for worker in self._workers:
            worker.start(config)
        for slot, worker in enumerate(self._workers):
            answer = worker.answer(START_SECONDS)
            if not isinstance(answer, Listening):
                self.stop(5.0)
                raise StartupError(f"receiving worker {slot} did not start: {answer.reason}")

    def update(self, config: Shipped) -> None:
        """Hand a reloaded config to every worker."""
        for worker in self._workers:
            worker.update(config)

    def check(self) -> None:
        """Restart any worker that died (logged), after removing what it left half-done."""
        for worker in self._workers:
            worker.check()

    def _died(self, slot: int, pid: int, code: int | None) -> None:
        log.error(
            "receiving worker %d (pid %d) exited (code %s): restarting",
            slot,
            pid,
            code,
            extra={"event": "worker-restarted"},
        )
        for stale in self._incoming.glob(f"{pid}-*"):
            stale.unlink(missing_ok=True)
        with self._counts.get_lock():  # its associations died with it
            self._counts[slot] = 0

    def stop(self, timeout: float) -> None:
        """Ask every worker to drain and exit; kill what is left after `timeout`."""
        for worker in self._workers:
            worker.ask_to_stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.finish(deadline)


def _die_with_parent() -> None:
    """Get SIGTERM (and so drain) when the fork server dies: it exits with the main process."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main(launch: Launch[Seat]) -> None:
    """Entry point of a receiving worker."""
    seat = launch.role
    orders = enter(launch, f"dr-worker-{seat.slot}")
    _die_with_parent()
    spool = launch.settings.spool
    lock = os.open(spool / "workers.lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        loaded = load_shipped(launch.config)
        budget = Budget(seat.counts, seat.slot, loaded.config.listen.max_associations)
        # Every association and C-STORE reads `loaded`: a reload below rebinds it.
        stack = ReceiveStack(Spool(spool), lambda: loaded, port=seat.port, budget=budget)
    except StartupError as exc:
        launch.conn.send(Failed(str(exc)))
        return
    stack.start()
    metrics.config_applied(loaded.config)
    launch.conn.send(Listening(os.getpid()))
    for config in orders.configs(every=0.5):
        if config is not None:
            loaded = load_shipped(config)
            metrics.config_applied(loaded.config)
    stack.drain()
