"""The fork server every child process of the daemon is forked from (a leaf: stdlib only).

Every child of the daemon (the receiving workers and the forwarder) is a fork of one
fork server that imported the router once, so a child, or a restarted one, starts in
milliseconds instead of importing for a second. Started before this process imports
the CLI, the server imports side by side with it on a second CPU: a daemon with two
workers listens in ~1.6 s instead of ~2.8 s, and its forwarder is ready when it does
(measured on this project's 2-CPU machine).

With a single receiving process (`workers: 1`, or one CPU) the main process listens
itself and the server starts after that, when the forwarder does. The server is
started with none of the variables the main process keeps to itself
(systemd's notify socket, prometheus-client's folder): a child gets what it needs from
its arguments (`router.observe.metrics.init_process`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
from typing import Any

MAX_DEFAULT_WORKERS = 8
_PR_SET_NAME = 15
PRELOAD = (
    "router.process.workers",
    "router.process.forwarder",
)
# Only the main process talks to systemd; the children learn the metrics folder from it.
PRIVATE_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
)


def default_workers() -> int:
    """The CPUs this process may run on (taskset, systemd CPUAffinity=), at most 8."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_WORKERS))


def children() -> Any:
    """The multiprocessing context every child of the daemon is made with."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_fork_server() -> None:
    """Start the fork server unless it runs, without the main process's private variables.

    Call it before each child's `start()`: the server is started by whoever needs it first.
    """
    children()
    saved = {name: os.environ.pop(name) for name in PRIVATE_VARIABLES if name in os.environ}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.update(saved)


def name_process(name: str) -> None:
    """Name this process for `ps -o comm`, `top` and `pgrep` (15 characters at most)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
