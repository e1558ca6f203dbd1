"""Forwarding to one Orthanc by STOW-RS vs by C-STORE: storescu -> router -> Orthanc.

    .venv/bin/python bench/stow_throughput.py [-n 200] [--rounds 3] [--big-mb 512]

The same router forwards (queued) to the same Orthanc (Debian's DICOMweb plugin, basic
auth), once to its DICOM port and once to its DICOMweb root; each time runs from the
first byte sent until the queue is empty (Orthanc answered every instance). The
big instance shows the forwarder's peak RSS while it streams one STOW-RS part.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from pathlib import Path
from statistics import median

from harness import (
    RouterDaemon,
    children,
    ct_files,
    make_multiframe,
    peak_rss_mib,
    rule_file,
    send,
    workdir,
)

from tests.peers import DicomWebOrthanc


def pending(spool: Path) -> int:
    """Deliveries not yet done."""
    with sqlite3.connect(spool / "queue.db") as db:
        return int(
            db.execute("SELECT COUNT(*) FROM deliveries WHERE state!='delivered'").fetchone()[0]
        )


def routed(base: Path, dest: str, files: list[Path], warmup: list[Path]) -> tuple[float, float]:
    """Seconds until every file is delivered, and the forwarder's peak RSS (MiB)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "web.pw").write_text("s3cret\n")
    daemon = RouterDaemon(
        base, rule_file(f"destinations:\n  pacs: {dest}\ndefault: [{{forward: pacs}}]\n")
    ).start()
    try:
        assert daemon.proc is not None
        spool = daemon.workdir / "spool"
        send(daemon.port, warmup, "ROUTER")
        while pending(spool):
            time.sleep(0.005)
        start = time.perf_counter()
        send(daemon.port, files, "ROUTER")
        while pending(spool):
            time.sleep(0.005)
        took = time.perf_counter() - start
        rss = max((peak_rss_mib(p) for p in children(daemon.proc.pid)), default=0.0)
    finally:
        daemon.stop()
    return took, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="number of 0.5 MB CT instances")
    parser.add_argument("--rounds", type=int, default=3, help="the median of this many runs")
    parser.add_argument("--big-mb", type=int, default=512, help="multi-frame size, 0 to skip")
    args = parser.parse_args()
    base = workdir("stow")
    files = ct_files(base / "data", args.n)
    warmup = ct_files(base / "warmup", 5)
    with DicomWebOrthanc(base / "orthanc") as orthanc:
        dests = {
            "C-STORE": f"{{ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc.dicom_port}}}",
            "STOW-RS": f"{{url: {orthanc.stow_url},"
            " auth: {type: basic, username: router, password_file: web.pw}}",
        }
        print(f"{args.n} x 0.5 MB CT -> dicom-router -> Orthanc 1.10, median of {args.rounds}")
        for label, dest in dests.items():
            times = []
            for i in range(args.rounds):
                orthanc.clear()
                times.append(routed(base / f"{label}-{i}", dest, files, warmup)[0])
            took = median(times)
            print(f"  {label}  {args.n / took:7.1f} inst/s  {args.n * 0.5 / took:6.1f} MB/s")
        if args.big_mb:
            orthanc.clear()
            big = base / "data" / "big.dcm"
            make_multiframe(big, args.big_mb * 1024 * 1024)
            took, rss = routed(base / "big", dests["STOW-RS"], [big], warmup)
            print(
                f"  one {args.big_mb} MB instance by STOW-RS: {took:.1f} s,"
                f" forwarder peak RSS {rss:.0f} MiB"
            )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
