"""Store-only throughput and memory: DCMTK storescu -> router (store rule) vs -> storescp.

    .venv/bin/python bench/store_throughput.py [-n 200] [--big-mb 300] [--metrics]

Prints both rates, their ratio and the router's peak RSS, then the same for one big
multi-frame object. Targets (2 cores): ratio >= 0.15, peak RSS <= 100 MiB for 300 MB.
--metrics instead compares the router without `metrics:` and with it, scraped every
second by a real Prometheus, in alternating runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from statistics import median

from harness import (
    Proc,
    RouterDaemon,
    ct_files,
    free_port,
    make_multiframe,
    rate,
    rule_file,
    send,
    storescp,
    wait_port,
    workdir,
)

CONFIG = rule_file("""\
destinations:
  archive: {path: "archive/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"}
default: [{store: archive}]
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="number of 0.5 MB CT instances")
    parser.add_argument("--big-mb", type=int, default=300, help="multi-frame size, 0 to skip")
    parser.add_argument("--rounds", type=int, default=5, help="the median of this many runs counts")
    parser.add_argument("--metrics", action="store_true", help="metrics off vs scraped at 1 s")
    args = parser.parse_args()
    base = workdir("store")
    files = ct_files(base / "data", args.n)
    if args.metrics:
        compare_metrics(base, files, args.rounds)
        shutil.rmtree(base, ignore_errors=True)
        return

    dcmtk, routed = [], []
    with storescp(base / "scp") as (port, _out):
        send(port, files[:5], "STORESCP")  # warm the page cache
        dcmtk = [send(port, files, "STORESCP") for _ in range(args.rounds)]
    port = free_port()
    bare = Proc(
        [sys.executable, Path(__file__).with_name("bare_scp.py"), str(port)],
        base / "bare.log",
        name="bare-scp",
    )
    try:
        wait_port(port, 10, proc=bare)
        send(port, files[:5], "BARE")
        floor = [send(port, files, "BARE") for _ in range(args.rounds)]
    finally:
        bare.stop()
    daemon = RouterDaemon(base / "router", CONFIG).start()
    try:
        send(daemon.port, files[:5], "ROUTER")
        routed = [send(daemon.port, files, "ROUTER") for _ in range(args.rounds)]
        rss = max(daemon.peak_rss_mib().values())  # main or a receiving worker
    finally:
        daemon.stop()
    print(
        f"{args.n} x 0.5 MB CT, one association, storescu TCP_NODELAY=1,"
        f" median of {args.rounds} runs"
    )
    print(f"  storescu -> storescp      {rate(args.n, median(dcmtk))}")
    print(f"  storescu -> bare pynetdicom SCP (chunked, no rules) {rate(args.n, median(floor))}")
    print(f"  storescu -> dicom-router  {rate(args.n, median(routed))}")
    print(f"  ratio router/storescp     {median(dcmtk) / median(routed):.2f}  (target >= 0.15)")
    print(
        f"  ratio bare pynetdicom/storescp {median(dcmtk) / median(floor):.2f},"
        f" router/bare pynetdicom {median(floor) / median(routed):.2f}"
    )
    print(f"  router peak RSS           {rss:.0f} MiB")

    if args.big_mb:
        big = base / "data" / "big.dcm"
        make_multiframe(big, args.big_mb * 1024 * 1024)
        with storescp(base / "scp-big") as (port, _out):
            t_dcmtk = send(port, [big], "STORESCP")
        daemon = RouterDaemon(base / "router-big", CONFIG).start()
        try:
            t_router = send(daemon.port, [big], "ROUTER")
            rss = max(daemon.peak_rss_mib().values())  # main or a receiving worker
        finally:
            daemon.stop()
        print(f"one {args.big_mb} MB multi-frame instance")
        print(f"  storescu -> storescp      {t_dcmtk:.2f} s")
        print(f"  storescu -> dicom-router  {t_router:.2f} s  (ratio {t_dcmtk / t_router:.2f})")
        print(f"  router peak RSS           {rss:.0f} MiB  (target <= 100)")
    shutil.rmtree(base, ignore_errors=True)


def compare_metrics(base: Path, files: list[Path], rounds: int) -> None:
    """Store throughput without metrics vs with /metrics scraped every second."""
    from tests.prom import Prometheus, scrape

    metrics_port = free_port()
    plain = RouterDaemon(base / "plain", CONFIG).start()
    scraped = RouterDaemon(base / "scraped", CONFIG + f"metrics: {{port: {metrics_port}}}\n")
    scraped.start()
    prom = Prometheus(base / "prometheus", [f"127.0.0.1:{metrics_port}"], interval="1s")
    try:
        prom.start()
        prom.wait_scalar('up{job="dicom-router"}', lambda v: v == 1)
        for daemon in (plain, scraped):
            send(daemon.port, files[:5], "ROUTER")
        off, on = [], []
        for _ in range(rounds):  # alternating, so drifting load hits both alike
            off.append(send(plain.port, files, "ROUTER"))
            on.append(send(scraped.port, files, "ROUTER"))
        scrapes = prom.wait_scalar('count_over_time(up{job="dicom-router"}[1h])', lambda v: v > 0)
        received = scrape(metrics_port)
    finally:
        prom.stop()
        plain.stop()
        scraped.stop()
    n = len(files)
    total = sum(v for (name, _), v in received.items() if name.endswith("instances_total"))
    print(f"{n} x 0.5 MB CT, one association, median of {rounds} alternating runs")
    print(f"  no metrics                      {rate(n, median(off))}")
    print(f"  metrics, Prometheus every 1 s   {rate(n, median(on))}")
    print(f"  ratio with/without              {median(off) / median(on):.3f}")
    print(f"  ({scrapes:.0f} scrapes; the router counted {total:.0f} instances)")


if __name__ == "__main__":
    main()
