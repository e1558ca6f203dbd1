"""The `dicom-router` console script and `python -m router`: for `run`, the fork server first.

The entry point imports everything; nothing imports it. It starts the fork server
(`router.process.forkserver`) before it imports the CLI, so the server's imports run side
by side with the CLI's on a second CPU.
"""

from __future__ import annotations

import os
import sys

from router.process.forkserver import default_workers, start_fork_server


def peeked_workers(run_args: list[str]) -> int | None:
    """`listen.workers` of the rule file `run` will load, if a quick look finds it."""
    path = os.environ.get("DICOM_ROUTER_CONFIG")
    for i, arg in enumerate(run_args):
        if arg in ("-c", "--config") and i + 1 < len(run_args):
            path = run_args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None:
        return None  # the embedded config: the default
    try:
        import yaml

        with open(path, encoding="utf-8") as fp:
            workers = yaml.safe_load(fp)["listen"]["workers"]
    except Exception:  # unreadable, invalid, no such key: router.cli will say what is wrong
        return None
    return workers if isinstance(workers, int) and not isinstance(workers, bool) else None


def main() -> int:
    """Entry point of the console script and `python -m router`."""
    argv = sys.argv[1:]
    # With one receiving process (one CPU, or `workers: 1`) the main process listens
    # itself: the fork server is then started after that, for the forwarder alone, so
    # that its imports do not slow the main process's on a single CPU.
    if argv[:1] == ["run"] and (peeked_workers(argv[1:]) or default_workers()) > 1:
        start_fork_server()
    from router.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # a child imports this module: it must not run main() again
    raise SystemExit(main())
