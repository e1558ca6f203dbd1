"""dicom-router: a declarative, config-driven DICOM storage routing daemon.

The command line's commands, and the one place exit codes are chosen: 0 success, 1
invalid input (config, arguments), 2 runtime failure. `router.__main__` (the console
script, `python -m router`) calls `main` and exits with what it returns. Errors are one
line each on stderr; `--debug` adds tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from importlib import resources
from pathlib import Path

from pydicom import dcmread

from router import __version__
from router.actions.pipeline import Pipeline, Received
from router.actions.plan import action_names, collection_notes
from router.config.destinations import FilesystemDestination
from router.config.model import Config
from router.dicom.header import tag_values
from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.errors import ActionError, ConfigError, RouterError, UsageError
from router.observe import logs
from router.rules.engine import also_matching, wanted_tags
from router.rules.fixtures import describe
from router.rules.ruleset import LoadedConfig, load
from router.spool.database import Spool

EXIT_OK, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-router", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    p.add_argument("--version", action="version", version=f"dicom-router {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        help="rule file (default: $DICOM_ROUTER_CONFIG or the embedded config/router.yaml)",
    )
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only")
    check = sub.add_parser("check", help="validate a rule file and run its fixtures")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on any warning too (for CI gates)"
    )
    explain = sub.add_parser("explain", help="dry run: which rule, why, what status")
    explain.add_argument("file", type=Path)
    explain.add_argument("dicom_files", type=Path, nargs="+")
    explain.add_argument("--calling-ae", default="EXPLAIN")
    explain.add_argument("--called-ae", default=None)
    explain.add_argument("--peer", default="127.0.0.1")
    sub.add_parser("schema", help="print the rule file's JSON Schema")
    q = sub.add_parser("queue", help="forwarding queues and dead letters")
    q.add_argument("file", type=Path)
    q.add_argument("action", choices=("list", "retry", "purge"), nargs="?", default="list")
    q.add_argument("--destination", default=None)
    q.add_argument(
        "--all",
        action="store_true",
        help="purge: pending deliveries too (e.g. of a removed destination)",
    )
    trace = sub.add_parser("trace", help="where did a study, series or instance go?")
    trace.add_argument("file", type=Path)
    trace.add_argument("uid")
    studies = sub.add_parser("studies", help="series and studies being collected; complete one")
    studies.add_argument("file", type=Path)
    studies.add_argument("action", choices=("list", "complete"), nargs="?", default="list")
    studies.add_argument("uid", nargs="?", help="complete: the Study or Series Instance UID")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line and return its exit code (called by `router.__main__`)."""
    args = _parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args))
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


def _check(args: argparse.Namespace) -> int:
    if not args.file.exists():
        raise UsageError(f"{args.file}: no such rule file")
    loaded = load(args.file)
    cfg = loaded.config
    print(f"{args.file}: syntax ok, config version {loaded.version}")
    _print_summary(cfg, loaded)
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    for result in loaded.fixtures:
        mark = "ok  " if result.passed else "FAIL"
        shown = ", ".join(
            f"{k}={describe(v, k)}"
            + ("" if result.got.get(k) == v else f" (got {describe(result.got.get(k), k)})")
            for k, v in result.expected.items()
        )
        print(f"  fixture {mark} {result.name}: {shown}")
    for failure in loaded.fixture_failures:
        print(failure, file=sys.stderr)
    if loaded.fixture_failures or (args.strict and loaded.warnings):
        return EXIT_INVALID
    return EXIT_OK


def _print_summary(cfg: Config, loaded: LoadedConfig) -> None:
    listen = cfg.listen
    print(
        f"  listen    {listen.ae_title} on {listen.host}:{listen.port}"
        f"{' (TLS)' if listen.tls else ''}, spool {loaded.spool}"
    )
    if cfg.metrics:
        host = f"[{cfg.metrics.host}]" if ":" in cfg.metrics.host else cfg.metrics.host
        where = f"http://{host}:{cfg.metrics.port}"
        print(f"  metrics   {where}/metrics (and /healthz, /readyz)")
    # Here, not at the top: the registry brings every sending library (httpx...), which the
    # daemon's main process, importing this module, does not need.
    from router.destinations import registry

    for name, dest in cfg.destinations.items():
        kind = registry.kind_of(dest)
        if kind is not None:
            print(f"  dest      {name}: {kind.describe(dest)}")
        elif isinstance(dest, FilesystemDestination):
            print(f"  dest      {name}: folder {loaded.resolve(dest.path)}")
    for i, rule in enumerate(cfg.rules, 1):
        print(
            f"  rule {i:<4} {rule.name}: "
            f"{', '.join(rule.match.model_dump(exclude_none=True, by_alias=True)) or 'always'}"
            f" -> {', '.join(action_names(rule.actions))}"
        )
    print(f"  default   -> {', '.join(action_names(cfg.default))}")


def _explain(args: argparse.Namespace) -> int:
    if not args.file.exists():
        raise UsageError(f"{args.file}: no such rule file")
    loaded = load(args.file)
    pipeline = Pipeline(lambda: loaded, None, loaded.spool / "work")
    worst = EXIT_OK
    for path in args.dicom_files:
        try:
            meta = dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            print(f"{path}: not a DICOM file: {exc}", file=sys.stderr)
            worst = EXIT_INVALID
            continue
        received = Received(
            path=path,
            sop_class_uid=str(
                meta.file_meta.get("MediaStorageSOPClassUID", meta.get("SOPClassUID", ""))
            ),
            sop_instance_uid=str(meta.get("SOPInstanceUID", "")),
            calling_ae=args.calling_ae,
            called_ae=args.called_ae or loaded.config.listen.ae_title,
            peer=args.peer,
            transfer_syntax=str(meta.file_meta.get("TransferSyntaxUID", "")),
        )
        print(f"{path}: {sop_class_name(received.sop_class_uid)} {received.sop_instance_uid}")
        try:
            decision, header = pipeline.evaluate(loaded, received)
        except ActionError as exc:
            print(f"  status  {hex_code(exc.status)} ({exc})")
            continue
        print(f"  rule    {decision.rule}")
        for reason in decision.reasons:
            print(f"  why     {reason}")
        tags = tag_values(header, wanted_tags(loaded.config))
        shadowed = also_matching(loaded.config, decision.rule, replace(received.facts(), tags=tags))
        if shadowed:
            print(f"  shadows {', '.join(shadowed)} (would also match; the first match wins)")
        print(f"  actions {', '.join(action_names(decision.actions))}")
        for note in collection_notes(decision.actions, loaded.config.studies):
            print(f"  collect {note}")
        print(f"  status  {hex_code(decision.status)}")
    return worst


def _schema(_args: argparse.Namespace) -> int:
    print(json.dumps(Config.model_json_schema(by_alias=True), indent=2))
    return EXIT_OK


def _spool(path: Path) -> Spool:
    if not path.exists():
        raise UsageError(f"{path}: no such rule file")
    folder = load(path).spool
    if not (folder / "queue.db").exists():
        raise UsageError(f"{folder}: no spool here yet (has the daemon run with this file?)")
    return Spool(folder)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _queue(args: argparse.Namespace) -> int:
    spool = _spool(args.file)
    if args.action == "retry":
        print(f"{spool.requeue_dead_letters(args.destination)} dead letters queued again")
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
    "check": _check,
    "explain": _explain,
    "schema": _schema,
    "queue": _queue,
    "trace": _trace,
    "studies": _studies,
}
