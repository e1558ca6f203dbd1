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
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from router import __version__
from router.cli_commitments import print_commitments, trace_commitments
from router.cli_rules import check, explain, schema
from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.errors import ConfigError, RouterError, UsageError, did_you_mean
from router.observe import logs
from router.rules.ruleset import LoadedConfig, load
from router.spool.database import Spool

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
        "List, retry or purge the deliveries waiting in the daemon's spool.",
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
        choices=("list", "retry", "purge"),
        nargs="?",
        default="list",
        help="list (default): deliveries waiting or dead; retry: queue dead letters again; "
        "purge: drop dead letters",
    )
    q.add_argument("--destination", default=None, metavar="NAME", help="only this destination")
    q.add_argument(
        "--all",
        action="store_true",
        help="purge: pending deliveries too (e.g. of a removed destination)",
    )
    trace = _command(sub, "trace")
    trace.add_argument("file", type=Path, nargs="?", metavar="FILE", help=_RAN_WITH)
    trace.add_argument("uid", metavar="UID", help="a Study, Series or SOP Instance UID")
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
            _queue_positionals(args)
        elif args.command == "studies":
            _studies_positionals(args)
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


def load_for_run(path: Path | None) -> LoadedConfig:
    """-c FILE, else $DICOM_ROUTER_CONFIG, else the embedded default (paths from the cwd)."""
    if path is None and os.environ.get("DICOM_ROUTER_CONFIG"):
        path = Path(os.environ["DICOM_ROUTER_CONFIG"])
    if path is not None:
        if not path.exists():
            raise UsageError(f"{path}: no such rule file")
        return load(path)
    embedded = resources.files("router") / "data" / "router.yaml"
    return load(
        Path("config/router.yaml (embedded)"),
        base_dir=Path.cwd(),
        text=embedded.read_text(encoding="utf-8"),
    )


def _studies_positionals(args: argparse.Namespace) -> None:
    """`studies [FILE] [list | complete UID]`: FILE is the word that is no action."""
    words = list(args.words)
    args.file = Path(words.pop(0)) if words and words[0] not in ("list", "complete") else None
    args.action = words.pop(0) if words else "list"
    args.uid = words.pop(0) if args.action == "complete" and words else None
    if words:
        raise UsageError(f"studies: unexpected {' '.join(words)!r}")


def _queue_positionals(args: argparse.Namespace) -> None:
    """`queue retry` with no FILE: argparse took the action word for the file."""
    word = str(args.file)
    if args.action == "list" and word in ("list", "retry", "purge") and not Path(word).exists():
        args.action, args.file = word, None


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


def _spool(path: Path | None) -> Spool:
    """The spool of the rule file the daemon ran with (no FILE: as `run` picks it)."""
    loaded = load_for_run(path)
    folder = loaded.spool
    if not (folder / "queue.db").exists():
        raise UsageError(
            f"{folder}: no spool here yet (has the daemon run with "
            f"{'this file' if path else loaded.path}?)"
        )
    return Spool(folder)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _queue(args: argparse.Namespace) -> int:
    spool = _spool(args.file)
    if args.all and args.action != "purge":
        raise UsageError(f"queue {args.action}: --all applies to purge only")
    if args.destination is not None:
        _known_destination(args.destination, args.file, spool)
    if args.action == "retry":
        # Dead letters go back to the queue; what waits for a later attempt (a backoff, a
        # paused destination) is due now, and the forwarder is told to end the pause.
        requeued = spool.requeue_dead_letters(args.destination)
        due = spool.due_now(args.destination)
        spool.kick(args.destination)
        print(f"{requeued} dead letters queued again, {due} waiting deliveries due now")
        return EXIT_OK
    if args.action == "purge":
        states = ("dead", "pending") if args.all else ("dead",)
        what = "deliveries" if args.all else "dead letters"
        print(f"{spool.purge(args.destination, states)} {what} purged")
        return EXIT_OK
    now = time.time()
    rows = spool.entries(args.destination)
    print(
        f"{'SOP Instance UID':<64} {'destination':<12} {'state':<8} {'tries':>5} "
        f"{'age':>6}  last error"
    )
    for d in rows:
        print(
            f"{d.sop_instance_uid:<64} {d.destination:<12} {d.state:<8} {d.attempts:>5} "
            f"{_age(now - d.received_at):>6}  {d.last_error or ''}"
        )
    for name, (pending, dead) in sorted(spool.depth().items()):
        if args.destination in (None, name):
            print(f"{name}: {pending} pending, {dead} dead letters")
    return EXIT_OK


def _known_destination(name: str, file: Path | None, spool: Spool) -> None:
    """A destination of the rule file, or one the spool still has deliveries for."""
    known = set(load_for_run(file).config.destinations or {}) | set(spool.depth())
    if name not in known:
        raise UsageError(f"unknown destination {name!r}{did_you_mean(name, known)}")


def _trace(args: argparse.Namespace) -> int:
    spool = _spool(args.file)
    decisions, deliveries = spool.trace(args.uid)
    if not decisions and not deliveries:
        print(f"{args.uid}: not in the decision log")
        return EXIT_INVALID
    for rec in decisions:
        when = datetime.fromtimestamp(rec.at).isoformat(sep=" ", timespec="seconds")
        print(
            f"{when} {rec.sop_instance_uid} {sop_class_name(rec.sop_class_uid)} from "
            f"{rec.calling_ae}@{rec.peer} to {rec.called_ae}: rule {rec.rule} "
            f"[{rec.actions or '-'}] status {hex_code(rec.status)} config {rec.config_version}"
            + (f" ({rec.comment})" if rec.comment else "")
        )
    _trace_units(spool, args.uid)
    trace_commitments(spool, sorted({d.sop_instance_uid for d in decisions} | {args.uid}))
    for d in deliveries:
        print(
            f"  -> {d.destination}: {d.sop_instance_uid} {d.state} after {d.attempts} "
            f"attempt(s), last status {hex_code(d.last_status)}"
            + (f" ({d.last_error})" if d.last_error else "")
        )
    return EXIT_OK


def _studies(args: argparse.Namespace) -> int:
    from router.destinations.sweeper import force_complete

    spool = _spool(args.file)
    if args.action == "complete":
        if not args.uid:
            raise UsageError("studies complete needs the Study or Series Instance UID")
        units = force_complete(spool, args.uid)
        if not units:
            print(f"{args.uid}: no study or series to complete in the spool")
            return EXIT_INVALID
        print(
            f"{args.uid}: {len(units)} series/studies to complete (forced); the running"
            " daemon sends them within a second"
        )
        return EXIT_OK
    now = time.time()
    print(f"{'level':<7} {'UID':<64} {'calling AE':<16} {'count':>5} {'held':>5} {'age':>6} quiet")
    for u in spool.units.listing():
        print(
            f"{u.level:<7} {u.uid:<64} {u.calling_ae:<16} {u.count:>5} {u.held:>5} "
            f"{_age(now - u.first_at):>6} {_age(now - u.last_at)}"
        )
    return EXIT_OK


def _commitments(args: argparse.Namespace) -> int:
    print_commitments(_spool(args.file))
    return EXIT_OK


def _trace_units(spool: Spool, uid: str) -> None:
    """The collection state of the study or series `uid` (trace)."""
    for u in spool.units.of(uid):
        when = (
            f"complete ({u.reason}) at "
            + datetime.fromtimestamp(u.completed_at or 0).isoformat(sep=" ", timespec="seconds")
            if u.state == "complete"
            else u.state
        )
        print(
            f"  {u.level} {u.uid}: {u.count} instance(s) from {u.calling_ae}, {when}"
            + (f", {u.late} late" if u.late else "")
            + (f", {u.held} deliveries held" if u.held else "")
        )


_COMMANDS = {
    "run": _run,
    "check": check,
    "explain": explain,
    "schema": schema,
    "queue": _queue,
    "trace": _trace,
    "studies": _studies,
    "commitments": _commitments,
}
