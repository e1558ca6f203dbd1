"""`python -m tests.fuzz --seed S --count N`: a fuzz campaign against a fresh daemon.

Prints the per-kind summary and exits 1 when any property is violated.
`--replay pdu:S:N` runs one case alone and prints what it sent and got.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.fuzz.cases import make_case
from tests.fuzz.checks import failed, run_campaign, summary
from tests.peers import dcmdump_failures


def main(argv: list[str] | None = None) -> int:
    """Run a campaign (or replay one case); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=10000, help="PDU cases and dataset cases")
    parser.add_argument("--pdus", type=int, help="PDU cases (default: --count)")
    parser.add_argument("--datasets", type=int, help="dataset cases (default: --count)")
    parser.add_argument("--workers", type=int, default=6, help="client threads")
    parser.add_argument("--replay", action="append", metavar="CASE",
                        help="run only this case (e.g. dataset:1:42); repeatable")
    parser.add_argument("--keep", action="store_true", help="keep the daemon's folder")
    parser.add_argument("--log-format", choices=("json", "text"), default="json",
                        help="the daemon's log format (every line must be a record of it)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-")) / "router"
    pdus = args.count if args.pdus is None else args.pdus
    datasets = args.count if args.datasets is None else args.datasets
    if args.replay:
        for name in args.replay:
            case = make_case(name)
            print(f"{name}: {case.family}/{case.kind}"
                  + (f" base={case.base.name} ts={case.transfer_syntax} {len(case.data)} bytes"
                     f" oracle={case.invalid or 'valid'}" if case.base else ""))
    else:
        print(f"fuzz: seed {args.seed}, {pdus} PDU cases, {datasets} dataset cases, "
              f"{args.workers} workers, daemon in {workdir}", flush=True)
    report = run_campaign(workdir, args.seed, pdus, datasets, args.workers,
                          names=args.replay, progress=True, log_format=args.log_format)
    if args.replay:
        for r in report.results:
            print(f"{r.name}: outcome={r.outcome} status="
                  f"{'-' if r.status is None else hex(r.status)} violation={r.violation}"
                  f"{r.detail}")
    print(summary(report))
    for text in report.tracebacks[:3]:
        print("\n--- traceback in the daemon's log ---\n" + text)
    for path in report.stray_files[:10] + report.spool_leftovers[:10]:
        print(f"left behind: {path}")
    unreadable = dcmdump_failures(sorted((workdir / "archive").glob("*.dcm")))
    print(f"stored files dcmdump cannot read: {len(unreadable)}")
    for path, errors in list(unreadable.items())[:5]:
        print(f"  {path}: {errors.splitlines()[0] if errors else ''}")
    if args.keep or args.replay:
        print(f"daemon folder kept: {workdir}")
    else:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    return 1 if failed(report) or unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
