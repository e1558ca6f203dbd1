"""The commands that read a daemon's spool: `queue`, `trace` (also `--fleet`), `studies`."""

from __future__ import annotations

import argparse
import getpass
import os
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

from router.cli_commitments import print_commitments, trace_commitments
from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.errors import UsageError, did_you_mean
from router.observe.fleet import view as fleet
from router.observe.fleet.view import age_text as _age
from router.rules.ruleset import LoadedConfig, load
from router.spool.database import Spool

EXIT_OK, EXIT_INVALID = 0, 1
QUEUE_ACTIONS = ("list", "retry", "purge", "pause", "resume")


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


def studies_positionals(args: argparse.Namespace) -> None:
    """`studies [FILE] [list | complete UID]`: FILE is the word that is no action."""
    words = list(args.words)
    args.file = Path(words.pop(0)) if words and words[0] not in ("list", "complete") else None
    args.action = words.pop(0) if words else "list"
    args.uid = words.pop(0) if args.action == "complete" and words else None
    if words:
        raise UsageError(f"studies: unexpected {' '.join(words)!r}")


def queue_positionals(args: argparse.Namespace) -> None:
    """`queue retry` with no FILE: argparse took the action word for the file."""
    word = str(args.file)
    if args.action == "list" and word in QUEUE_ACTIONS and not Path(word).exists():
        args.action, args.file = word, None


def _spool(path: Path | None) -> Spool:
    """The spool of the rule file the daemon ran with (no FILE: as `run` picks it)."""
    return _loaded_spool(path)[1]


def _loaded_spool(path: Path | None) -> tuple[LoadedConfig, Spool]:
    """The rule file `run` would use (`_spool`'s rule) and its spool."""
    loaded = load_for_run(path)
    folder = loaded.spool
    if not (folder / "queue.db").exists():
        raise UsageError(
            f"{folder}: no spool here yet (has the daemon run with "
            f"{'this file' if path else loaded.path}?)"
        )
    return loaded, Spool(folder)


def _fleet_lines(args: argparse.Namespace) -> list[str]:
    """`trace --fleet` / `queue --fleet`: read every node from the fleet's PostgreSQL."""
    loaded = load_for_run(args.file)
    cfg = loaded.config.fleet
    if cfg is None:
        raise UsageError(f"{loaded.path}: --fleet needs a `fleet:` section")
    with fleet.connect(cfg, loaded.base_dir) as conn:
        if args.command == "trace":
            return fleet.trace_lines(conn, args.uid, cfg.stale_after)
        return fleet.queue_lines(conn, args.destination, cfg.stale_after)


def queue(args: argparse.Namespace) -> int:
    if args.fleet:
        if args.action != "list":
            raise UsageError(f"queue {args.action}: --fleet lists only (act on the node)")
        print("\n".join(_fleet_lines(args)))
        return EXIT_OK
    loaded, spool = _loaded_spool(args.file)
    if args.all and args.action != "purge":
        raise UsageError(f"queue {args.action}: --all applies to purge only")
    if args.destination is not None:
        _known_destination(args.destination, loaded, spool)
    if args.action == "retry":
        # Dead letters go back to the queue; what waits for a later attempt (a backoff, a
        # paused destination) is due now, and the forwarder is told to end the pause.
        requeued = spool.requeue_dead_letters(args.destination)
        due = spool.due_now(args.destination)
        spool.kick(args.destination)
        print(f"{requeued} dead letters queued again, {due} waiting deliveries due now")
        return EXIT_OK
    if args.action in ("pause", "resume"):
        return _pause_or_resume(args, spool)
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
    paused = spool.pauses.listing()
    for name, (pending, dead) in sorted(spool.depth().items()):
        if args.destination in (None, name):
            pause = paused.get(name)
            print(
                f"{name}: {pending} pending, {dead} dead letters"
                + (f", paused by {pause.by} {_age(now - pause.at)} ago" if pause else "")
            )
    return EXIT_OK


def _pause_or_resume(args: argparse.Namespace, spool: Spool) -> int:
    """`queue pause|resume --destination D`: the running forwarder sees it within 1 s."""
    name = args.destination
    if name is None:
        raise UsageError(f"queue {args.action} needs --destination NAME")
    if args.action == "pause":
        pause = spool.pause(name, getpass.getuser())
        print(f"{name} paused by {pause.by}: nothing is sent to it until `queue resume`")
        return EXIT_OK
    ended, pending = spool.resume(name)
    was = f"paused by {ended.by}" if ended else "was not paused"
    print(f"{name} resumed ({was}): {pending} pending deliveries due now")
    return EXIT_OK


def _known_destination(name: str, loaded: LoadedConfig, spool: Spool) -> None:
    """A destination of the rule file, or one the spool still has deliveries for."""
    known = set(loaded.config.destinations or {}) | set(spool.depth())
    if name not in known:
        raise UsageError(f"unknown destination {name!r}{did_you_mean(name, known)}")


def trace(args: argparse.Namespace) -> int:
    if args.fleet:
        lines = _fleet_lines(args)
        print("\n".join(lines) if lines else f"{args.uid}: on no node of the fleet")
        return EXIT_OK if lines else EXIT_INVALID
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


def studies(args: argparse.Namespace) -> int:
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


def commitments(args: argparse.Namespace) -> int:
    """`dicom-router commitments [FILE]`: the storage commitment transactions."""
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
