"""Store-only throughput and memory: DCMTK storescu -> router (store rule) vs -> storescp.

    .venv/bin/python bench/store_throughput.py [-n 200] [--big-mb 300]

Prints both rates, their ratio and the router's peak RSS, then the same for one big
multi-frame object. Targets (2 cores): ratio >= 0.15, peak RSS <= 100 MiB for 300 MB.
"""

from __future__ import annotations

import argparse
import shutil

from harness import (
    RouterDaemon,
    ct_files,
    make_multiframe,
    peak_rss_mib,
    rate,
    send,
    storescp,
    workdir,
)

CONFIG = """
version: 1
listen: {ae_title: ROUTER, port: {port}}
spool: spool
spool_min_free: 1GiB
destinations:
  archive: {path: "archive/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"}
default: [{store: archive}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="number of 0.5 MB CT instances")
    parser.add_argument("--big-mb", type=int, default=300, help="multi-frame size, 0 to skip")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    base = workdir("store")
    files = ct_files(base / "data", args.n)

    dcmtk, routed = [], []
    with storescp(base / "scp") as (port, _out):
        send(port, files[:5], "STORESCP")  # warm the page cache
        dcmtk = [send(port, files, "STORESCP") for _ in range(args.rounds)]
    daemon = RouterDaemon(base / "router", CONFIG).start()
    try:
        send(daemon.port, files[:5], "ROUTER")
        routed = [send(daemon.port, files, "ROUTER") for _ in range(args.rounds)]
        rss = peak_rss_mib(daemon.proc.pid)  # type: ignore[union-attr]
    finally:
        daemon.stop()
    print(f"{args.n} x 0.5 MB CT, one association, storescu TCP_NODELAY=1, best of {args.rounds}")
    print(f"  storescu -> storescp      {rate(args.n, min(dcmtk))}")
    print(f"  storescu -> dicom-router  {rate(args.n, min(routed))}")
    print(f"  ratio router/storescp     {min(dcmtk) / min(routed):.2f}  (target >= 0.15)")
    print(f"  router peak RSS           {rss:.0f} MiB")

    if args.big_mb:
        big = base / "data" / "big.dcm"
        make_multiframe(big, args.big_mb * 1024 * 1024)
        with storescp(base / "scp-big") as (port, _out):
            t_dcmtk = send(port, [big], "STORESCP")
        daemon = RouterDaemon(base / "router-big", CONFIG).start()
        try:
            t_router = send(daemon.port, [big], "ROUTER")
            rss = peak_rss_mib(daemon.proc.pid)  # type: ignore[union-attr]
        finally:
            daemon.stop()
        print(f"one {args.big_mb} MB multi-frame instance")
        print(f"  storescu -> storescp      {t_dcmtk:.2f} s")
        print(f"  storescu -> dicom-router  {t_router:.2f} s  (ratio {t_dcmtk / t_router:.2f})")
        print(f"  router peak RSS           {rss:.0f} MiB  (target <= 100)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
