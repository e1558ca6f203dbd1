"""What metrics cost: per C-STORE (in process) and per /metrics scrape (the real daemon).

    .venv/bin/python bench/metrics_cost.py [--calls 200000] [--queued 1000] [--scrapes 200]

1. The instrumentation of one C-STORE (`c_store_started` + `c_store_done`: a stat, four
   counters, one histogram), in prometheus-client's multiprocess mode, against metrics off.
2. /metrics of `dicom-router run` with 20 DICOM destinations, 100 rules and `--queued`
   instances pending for every destination (20 x that many queue rows): scrape latency
   percentiles. Target: <= 50 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness import RouterDaemon, free_port, make_ct, rule_file, workdir


def per_c_store(calls: int) -> None:
    """µs per instrumented C-STORE, metrics on (multiprocess files) and off."""
    from router.config.model import Config
    from router.observe import metrics

    tmp = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    sample = tmp / "ct.dcm"
    make_ct(sample, size=4096)

    def one() -> None:
        metrics.c_store_done(metrics.c_store_started(sample), "CT_1", 0, "default")

    def cost(fn: Callable[[], object]) -> float:
        # CPU time, not wall time: on a shared box waiting for a core is not our cost.
        return min(timeit.repeat(fn, number=calls, repeat=3, timer=time.process_time)) / calls

    off = cost(one)
    config = Config.model_validate(
        {
            "version": 1,
            "listen": {"ae_title": "R"},
            "callers": [{"ae_title": "CT*"}],
            "rules": [
                {"name": f"r{i}", "match": {"calling_ae": f"X{i}"}, "actions": ["discard"]}
                for i in range(100)
            ],
            "default": ["discard"],
        }
    )
    metrics.enable(tmp, config)
    on = cost(one)
    stat = cost(lambda: os.stat(sample))
    print(f"per C-STORE, {calls} calls, best of 3, CPU time:")
    print(f"  metrics off  {off * 1e6:6.2f} µs")
    print(f"  metrics on   {on * 1e6:6.2f} µs  (of which the file's stat {stat * 1e6:.2f} µs)")
    shutil.rmtree(tmp, ignore_errors=True)


def big_config(queued: int, metrics_port: int) -> str:
    dests = "".join(
        f"  d{i:02d}: {{ae_title: D{i:02d}, host: 127.0.0.1, port: {free_port()},"
        " retry: {initial_delay: 30, max_delay: 60}}\n"
        for i in range(20)
    )
    rules = "".join(
        f'  - name: rule{i:03d}\n    match: {{calling_ae: "M{i:03d}*"}}\n'
        f"    actions: [{{forward: d{i % 20:02d}}}]\n"
        for i in range(100)
    )
    return rule_file(
        f"metrics: {{port: {metrics_port}}}\n"
        'callers: [{ae_title: "M*"}, {ae_title: "CT*"}]\n'
        f"destinations:\n{dests}rules:\n{rules}default: [discard]\n"
    )


def scrape_latency(queued: int, scrapes: int) -> None:
    """Scrape percentiles of the real daemon with a big config and full queues."""
    from router.spool.database import Spool
    from router.spool.queue import Instance

    base = workdir("metrics")
    metrics_port = free_port()
    daemon = RouterDaemon(base / "router", big_config(queued, metrics_port))
    spool = Spool(base / "router" / "spool", synchronous="OFF")
    sample = base / "ct.dcm"
    make_ct(sample, size=4096)
    names = [f"d{i:02d}" for i in range(20)]
    for i in range(queued):  # every instance queued for all 20 destinations
        copy = base / "in.dcm"
        os.link(sample, copy)
        spool.enqueue(
            copy, names, Instance(f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        )
        copy.unlink()
    daemon.start()
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read()
        took = []
        cpu = _cpu_seconds(daemon.proc.pid)  # type: ignore[union-attr]
        for _ in range(scrapes):
            start = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as rsp:
                body = rsp.read()  # the last one is described: the forwarder's series too
            took.append(time.perf_counter() - start)
            time.sleep(0.01)
        cpu = (_cpu_seconds(daemon.proc.pid) - cpu) / scrapes  # type: ignore[union-attr]
    finally:
        daemon.stop()
    shutil.rmtree(base, ignore_errors=True)
    took.sort()
    q = statistics.quantiles(took, n=100, method="inclusive")
    lines = body.count(b"\n")
    print(
        f"/metrics with 20 destinations, 100 rules, {queued * 20} queued deliveries"
        f" ({len(body)} bytes, {lines} lines), {scrapes} scrapes:"
    )
    print(
        f"  median {statistics.median(took) * 1e3:.1f} ms, p95 {q[94] * 1e3:.1f} ms,"
        f" max {took[-1] * 1e3:.1f} ms  (target <= 50 ms);"
        f" daemon CPU {cpu * 1e3:.1f} ms per scrape"
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--queued", type=int, default=1000, help="instances pending per dest")
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    scrape_latency(args.queued, args.scrapes)
    per_c_store(args.calls)


if __name__ == "__main__":
    main()
