"""Collected forwarding (`collect: study`) against the per-instance forward, in one run.

    .venv/bin/python bench/collect_throughput.py [-n 1000] [--quiet 2] [--rounds 1]

storescu sends n 0.5 MB CT instances of one study to the router, which forwards them to
DCMTK's storescp, once per instance (`forward: pacs`) and once collected (`forward: {to:
pacs, collect: study}`, `studies.quiet` as given). Prints, for each, the instances per
second from the first byte sent until the queue is empty (collected: less the quiet time),
the collected send phase alone (from the study's completion), the quiet-to-sent latency
(from the end of the quiet time to the last delivery) and the peak RSS of the router's
processes. Target (issue 16): collected >= 0.9 x per-instance once the quiet time has
passed, and flat memory (the set is sent from the spool, not held in memory).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from harness import (
    RouterDaemon,
    children,
    ct_files,
    peak_rss_mib,
    rule_file,
    send,
    storescp,
    workdir,
)

PER_INSTANCE = rule_file("""\
destinations:
  pacs: {ae_title: STORESCP, host: 127.0.0.1, port: %d}
default: [{forward: pacs}]
""")
COLLECTED = rule_file("""\
studies: {quiet: %gs}
destinations:
  pacs: {ae_title: STORESCP, host: 127.0.0.1, port: %d}
default: [{forward: {to: pacs, collect: study}}]
""")


@dataclass
class Run:
    """One measured run."""

    seconds: float  # first byte sent -> queue empty
    send_phase: float  # the study's completion -> queue empty (collected only)
    quiet_to_sent: float  # last arrival + quiet -> queue empty (collected only)
    rss_mib: float  # peak RSS of the router's busiest process


def pending(spool: Path) -> int:
    """Deliveries not yet delivered (held ones included)."""
    with sqlite3.connect(spool / "queue.db") as db:
        return int(
            db.execute("SELECT COUNT(*) FROM deliveries WHERE state!='delivered'").fetchone()[0]
        )


def unit_times(spool: Path) -> tuple[float, float]:
    """The study's last arrival and completion (epoch seconds)."""
    with sqlite3.connect(spool / "queue.db") as db:
        row = db.execute(
            "SELECT last_at, completed_at FROM received_units WHERE level='study'"
        ).fetchone()
    return float(row[0]), float(row[1])


def routed(base: Path, files: list[Path], label: str, config: str, quiet: float | None) -> Run:
    """Send `files` through a router with `config`; time until every one is delivered."""
    with storescp(base / f"scp-{label}") as (scp_port, _out):
        text = config % (scp_port,) if quiet is None else config % (quiet, scp_port)
        daemon = RouterDaemon(base / f"router-{label}", text).start()
        try:
            assert daemon.proc is not None
            spool = daemon.workdir / "spool"
            start, wall = time.perf_counter(), time.time()
            send(daemon.port, files, "ROUTER")
            while pending(spool):
                time.sleep(0.005)
            took = time.perf_counter() - start
            done = wall + took
            rss = max(peak_rss_mib(p) for p in [daemon.proc.pid, *children(daemon.proc.pid)])
            if quiet is None:
                return Run(took, took, 0.0, rss)
            last_at, completed_at = unit_times(spool)
            return Run(took - quiet, done - completed_at, done - (last_at + quiet), rss)
        finally:
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="number of 0.5 MB CT instances")
    parser.add_argument("--quiet", type=float, default=2.0, help="studies.quiet in seconds")
    parser.add_argument("--rounds", type=int, default=1, help="the median of this many runs")
    args = parser.parse_args()
    base = workdir("collect")
    files = ct_files(base / "data", args.n)
    each, whole = [], []
    for i in range(args.rounds):  # interleaved: both see the same machine load
        each.append(routed(base, files, f"each{i}", PER_INSTANCE, None))
        whole.append(routed(base, files, f"whole{i}", COLLECTED, args.quiet))
    t_each = median(r.seconds for r in each)
    t_whole = median(r.seconds for r in whole)
    print(f"{args.n} x 0.5 MB CT in one study, quiet {args.quiet:g} s, median of {args.rounds}")
    print(f"  per-instance forward        {args.n / t_each:7.1f} inst/s ({t_each:.2f} s)")
    print(
        f"  collect: study, less quiet  {args.n / t_whole:7.1f} inst/s ({t_whole:.2f} s)"
        f"   ratio {t_each / t_whole:.2f} (target >= 0.9)"
    )
    phase = median(r.send_phase for r in whole)
    print(f"  collected send phase alone  {args.n / phase:7.1f} inst/s ({phase:.2f} s)")
    print(f"  quiet-to-sent latency (last delivery) {median(r.quiet_to_sent for r in whole):.2f} s")
    print(
        f"  peak RSS of the router's processes: per-instance {max(r.rss_mib for r in each):.0f}"
        f" MiB, collected {max(r.rss_mib for r in whole):.0f} MiB"
    )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
