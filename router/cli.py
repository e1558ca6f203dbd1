"""dicom-router: a declarative, config-driven DICOM storage routing daemon.

The command line's commands, and the one place exit codes are chosen: 0 success, 1
invalid input (config, arguments), 2 runtime failure. `router.__main__` (the console
script, `python -m router`) calls `main` and exits with what it returns. Errors are one
line each on stderr; `--debug` adds tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from router import __version__
from router import cli_spool as spool_commands
from router.cli_rules import check, explain, schema
from router.cli_spool import load_for_run
from router.errors import ConfigError, RouterError, UsageError
from router.observe import logs

EXIT_OK, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, with exit 1 for a bad argument (argparse's own is 2, our runtime failure)."""

    def error(self, message: str) -> NoReturn:
        """Usage and one line on stderr, exit 1: `RestartPreventExitStatus=1` stops a bad unit."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


_ABOUT = "Route DICOM C-STORE requests by the rules of a YAML rule file."
_EXITS = (
    "exit status: 0 success, 1 invalid rule file or arguments (or a failing fixture), "
    "2 runtime failure. `dicom-router COMMAND --help` describes a command."
)
_RULE_FILE = "the YAML rule file"
_RAN_WITH = (
    "the rule file the daemon ran with (default: as for `run`: $DICOM_ROUTER_CONFIG, else "
    "the embedded config, whose spool is in the current folder)"
)

_FLEET = "every node, from the PostgreSQL of the rule file's `fleet:` section (list only)"

# Each command: its line in `dicom-router --help`, and the description atop its own --help.
_ABOUT_COMMANDS = {
    "run": (
        "run the daemon",
        "Listen for associations and route every C-STORE by the rule file; "
        "SIGHUP or saving the file reloads it, SIGTERM or Ctrl-C stops after a drain.",
    ),
    "check": (
        "validate a rule file and run its fixtures",
        "Validate a rule file, print what it does, and run its `tests:` fixtures. "
        "Problems are printed as FILE:LINE:COL: key.path: message.",
    ),
    "explain": (
        "dry run: which rule, why, what status",
        "Run DICOM files through the rules as if received, without storing or "
        "sending anything: the rule that matches, why, its actions and the status.",
    ),
    "schema": (
        "print the rule file's JSON Schema",
        "Print the rule file's JSON Schema (for editors and CI).",
    ),
    "queue": (
        "forwarding queues and dead letters",
        "List, retry or purge the deliveries waiting in the daemon's spool; pause or "
        "resume a destination.",
    ),
    "trace": (
        "where did a study, series or instance go?",
        "Print the decision log's lines and the deliveries for a UID.",
    ),
    "studies": (
        "series and studies being collected; complete one now",
        "List the series and studies that `collect` and `notify` actions are collecting, "
        "or complete one now (the running daemon sends it within a second).",
    ),
    "commitments": (
        "storage commitment requests: pending and recent",
        "List the Storage Commitment transactions in the spool, newest first: items, "
        "failed items, age and the report's state.",
    ),
}


def _command(sub: Any, name: str) -> argparse.ArgumentParser:
    """Add one command to the subparsers `sub`, with its help and description."""
    brief, description = _ABOUT_COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(name, help=brief, description=description)
    return parser


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dicom-router", description=_ABOUT, epilog=_EXITS)
    p.add_argument("--debug", action="store_true", help="verbose logs, and tracebacks on errors")
    p.add_argument("--version", action="version", version=f"dicom-router {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _command(sub, "run")
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="rule file (default: $DICOM_ROUTER_CONFIG, else the embedded config/router.yaml, "
        "whose relative paths start in the current folder)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: one readable line per event (default); json: one JSON object per line",
    )
    run.add_argument(
        "--no-watch", action="store_true", help="do not watch the file: reload on SIGHUP only"
    )
    check = _command(sub, "check")
    check.add_argument("file", type=Path, metavar="FILE", help=_RULE_FILE)
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on any warning too (for CI gates)"
    )
    explain = _command(sub, "explain")
    explain.add_argument("file", type=Path, metavar="FILE", help=_RULE_FILE)
    explain.add_argument(
        "dicom_files", type=Path, nargs="+", metavar="DICOM_FILE", help="DICOM files (Part 10)"
    )
    explain.add_argument(
        "--calling-ae", default="EXPLAIN", metavar="AE", help="the sender's AE title"
    )
    explain.add_argument(
        "--called-ae", default=None, metavar="AE", help="default: the file's listen.ae_title"
    )
    explain.add_argument(
        "--peer", default="127.0.0.1", metavar="ADDRESS", help="the sender's IP address"
    )
    _command(sub, "schema")
    q = _command(sub, "queue")
    q.add_argument("file", type=Path, nargs="?", metavar="FILE", help=_RAN_WITH)
    q.add_argument(
        "action",
        choices=spool_commands.QUEUE_ACTIONS,
        nargs="?",
        default="list",
        help="list (default): deliveries waiting or dead; retry: queue dead letters again; "
        "purge: drop dead letters; pause / resume --destination NAME: send it nothing "
        "until resumed (the running daemon sees it within a second)",
    )
    q.add_argument("--destination", default=None, metavar="NAME", help="only this destination")
    q.add_argument(
        "--all",
        action="store_true",
        help="purge: pending deliveries too (e.g. of a removed destination)",
    )
    q.add_argument("--fleet", action="store_true", help=_FLEET)
    trace = _command(sub, "trace")
    trace.add_argument("file", type=Path, nargs="?", metavar="FILE", help=_RAN_WITH)
    trace.add_argument("uid", metavar="UID", help="a Study, Series or SOP Instance UID")
    trace.add_argument("--fleet", action="store_true", help=_FLEET)
    studies = _command(sub, "studies")
    studies.add_argument(
        "words",
        nargs="*",
        metavar="[FILE] [list | complete UID]",
        help="FILE: " + _RAN_WITH + "; list: what is being collected (default); "
        "complete UID: complete that Study or Series now",
    )
    commitments = _command(sub, "commitments")
    commitments.add_argument("file", type=Path, nargs="?", metavar="FILE", help=_RAN_WITH)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line and return its exit code (called by `router.__main__`)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "queue":
            spool_commands.queue_positionals(args)
        elif args.command == "studies":
            spool_commands.studies_positionals(args)
        return int(_COMMANDS[args.command](args))
    except BrokenPipeError:
        # The reader went away (`dicom-router schema | head`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"dicom-router: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (RouterError, OSError) as exc:
        if args.debug:
            raise
        print(f"dicom-router: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"dicom-router: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for a traceback)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def _run(args: argparse.Namespace) -> int:
    from router.process.forkserver import default_workers, start_fork_server

    logs.setup(args.log_format, args.debug)
    loaded = load_for_run(args.config)
    if loaded.fixture_failures:
        raise ConfigError(loaded.fixture_failures)
    if (loaded.config.listen.workers or default_workers()) > 1:
        start_fork_server()  # as router.__main__ does, for a caller that did not go through it
    # pynetdicom is imported only for the commands that need it.
    from router.process.daemon import Daemon

    daemon = Daemon(loaded, watch=not args.no_watch, log_format=args.log_format, debug=args.debug)
    daemon.install_signal_handlers()
    try:
        daemon.startup()
        daemon.run()
    finally:
        daemon.shutdown()
    return EXIT_OK


_COMMANDS = {
    "run": _run,
    "check": check,
    "explain": explain,
    "schema": schema,
    "queue": spool_commands.queue,
    "trace": spool_commands.trace,
    "studies": spool_commands.studies,
    "commitments": spool_commands.commitments,
}
