"""The daemon's child processes (receiving workers, the forwarder): one handle, one pipe.

Every child is a fork of the fork server (`router.process.forkserver`) and gets one
argument, a `Launch` (as gunicorn hands its workers one config). The main process and a
child talk over one pipe in the typed messages below: `NewConfig` after a reload and
`Stop` at shutdown go down; a receiving worker's `Listening` or `Failed` comes up once,
at start. The main process calls `ChildProcess.check()` every second: a child that died
is reported (`on_death`) and started again with the current config.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

from router.observe import logs, metrics
from router.process import forkserver
from router.rules.ruleset import Shipped

R = TypeVar("R")


@dataclass(frozen=True)
class Settings:
    """What every child starts from, the same for all of them."""

    spool: Path
    log_format: str
    debug: bool
    metrics_folder: str | None  # `metrics.shared_folder()`: None when metrics are off


@dataclass(frozen=True)
class Launch(Generic[R]):
    """A child's one argument: the settings, its config, its pipe end, and its role's own."""

    settings: Settings
    config: Shipped  # the rules in force when it was (re)started
    conn: Connection  # its end of the pipe to the main process
    role: R  # what this kind of child needs besides (a worker: its slot and port)


@dataclass(frozen=True)
class NewConfig:
    """Main process to child: a reload swapped in this config."""

    config: Shipped


@dataclass(frozen=True)
class Stop:
    """Main process to child: finish what is in hand, then exit."""


@dataclass(frozen=True)
class Listening:
    """Receiving worker to main process: it accepts associations."""

    pid: int


@dataclass(frozen=True)
class Failed:
    """Receiving worker to main process: it cannot start, and why."""

    reason: str


ToChild = NewConfig | Stop
FromChild = Listening | Failed


class ChildProcess(Generic[R]):
    """The main process's handle on one child: start, new configs, restart, stop."""

    def __init__(
        self,
        main: Callable[[Launch[R]], None],
        name: str,
        settings: Settings,
        role: R,
        on_death: Callable[[int, int | None], None],
    ) -> None:
        """`main(launch)` runs in the child; `on_death(pid, exit code)` before a restart."""
        self._ctx = forkserver.children()
        self._main = main
        self._name = name
        self._settings = settings
        self._role = role
        self._on_death = on_death
        self._proc: Any = None
        self._conn: Connection | None = None
        self._config: Shipped | None = None

    def start(self, config: Shipped) -> None:
        """Fork the child from the fork server (started now if it is not running)."""
        self._config = config
        if self._conn is not None:
            self._conn.close()  # a dead child's
        parent_end, child_end = self._ctx.Pipe()
        launch = Launch(self._settings, config, child_end, self._role)
        self._proc = self._ctx.Process(target=self._main, name=self._name, args=(launch,))
        forkserver.start_fork_server()
        self._proc.start()
        child_end.close()
        self._conn = parent_end

    def answer(self, timeout: float) -> FromChild:
        """The child's word at start; `Failed` if it exits or says nothing for `timeout` s."""
        assert self._conn is not None, "start() first"
        try:
            if not self._conn.poll(timeout):
                return Failed("no answer")
            answer: FromChild = self._conn.recv()
        except (EOFError, OSError):
            return Failed(f"exited with code {self._proc.exitcode}")
        return answer

    def update(self, config: Shipped) -> None:
        """Hand the child a reloaded config (a dead one gets it when `check()` restarts it)."""
        self._config = config
        self._send(NewConfig(config))

    def check(self) -> None:
        """Start the child again if it died, once `on_death` has logged and cleaned up."""
        proc = self._proc
        if proc is None or proc.is_alive() or self._config is None:
            return
        self._on_death(proc.pid, proc.exitcode)
        metrics.process_dead(proc.pid)
        self.start(self._config)

    def ask_to_stop(self) -> None:
        """Send `Stop`: the child finishes what it has in hand and exits."""
        if self._proc is not None:
            self._send(Stop())

    def finish(self, deadline: float) -> None:
        """Wait for the child to exit until `deadline` (time.monotonic), then kill it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self, timeout: float) -> None:
        """`ask_to_stop()`, then `finish()` within `timeout` s."""
        self.ask_to_stop()
        self.finish(time.monotonic() + timeout)

    def _send(self, message: ToChild) -> None:
        try:
            if self._conn is not None:
                self._conn.send(message)
        except OSError:
            pass  # the child is dead: `check()` restarts it


class Orders:
    """A child's side of the pipe: what the main process orders, until it says stop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._parent = os.getppid()  # the fork server: it exits with the main process
        self.stopping = threading.Event()  # set by SIGTERM

    def configs(self, every: float) -> Iterator[Shipped | None]:
        """Each config sent, or None after `every` s without one; ends on `Stop`, on
        SIGTERM, or when the main process is gone."""
        while not self.stopping.is_set() and os.getppid() == self._parent:
            try:
                message: ToChild | None = self._conn.recv() if self._conn.poll(every) else None
            except (EOFError, OSError):
                return  # the main process is gone
            if isinstance(message, Stop):
                return
            yield message.config if message is not None else None


def enter(launch: Launch[Any], ps_name: str) -> Orders:
    """A child's first steps: its `ps` name, signals, logs and metrics."""
    forkserver.name_process(ps_name)
    orders = Orders(launch.conn)
    # SIGTERM reaches the whole cgroup under systemd: each child finishes what it has in
    # hand, then exits. Ctrl-C and SIGHUP are the main process's to act on.
    signal.signal(signal.SIGTERM, lambda *_: orders.stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup(launch.settings.log_format, launch.settings.debug)
    metrics.init_process(launch.settings.metrics_folder)
    return orders
