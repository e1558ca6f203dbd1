"""The `dicom-router` console script: for `run`, the workers' fork server starts first.

The receiving workers are forks of a fork server that imports the receiving code once
(`router.workers`). Started before this process imports the CLI, the two import side by
side on two CPUs instead of one after the other: a daemon with workers listens about a
second sooner (2.8 s -> 1.6 s measured on this project's 2-CPU machine). This module
imports nothing of the router but `yaml` to peek at `listen.workers`; the rule file is
loaded and checked as ever by `router.cli`, which also starts the fork server when the
peek could not tell.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Sequence

MAX_DEFAULT_WORKERS = 8
PRELOAD = ("router.actions", "router.delivery", "router.journal", "router.scp", "router.spool")


def default_workers() -> int:
    """The CPUs this process may run on (taskset, systemd CPUAffinity=), at most 8."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_WORKERS))


def start_fork_server() -> None:
    """Start the workers' fork server (once), importing `PRELOAD` in its own process."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()


def peeked_workers(run_args: Sequence[str]) -> int | None:
    """`listen.workers` of the rule file `run` will load, if a quick look finds it."""
    path = os.environ.get("DICOM_ROUTER_CONFIG")
    for i, arg in enumerate(run_args):
        if arg in ("-c", "--config") and i + 1 < len(run_args):
            path = run_args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None:
        return None  # the embedded config: no `workers`, the default
    try:
        import yaml

        with open(path, encoding="utf-8") as fp:
            workers = yaml.safe_load(fp)["listen"]["workers"]
    except Exception:  # unreadable, invalid or no such key: router.cli will tell
        return None
    return workers if isinstance(workers, int) and not isinstance(workers, bool) else None


def main() -> int:
    """Entry point of the console script and `python -m router`."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and (peeked_workers(argv[1:]) or default_workers()) > 1:
        start_fork_server()
    from router.cli import main as cli_main

    return cli_main(argv)
