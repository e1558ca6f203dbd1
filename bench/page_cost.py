"""What the status pages cost: /metrics scrape latency and C-STORE throughput while a
page is loaded every second (the pages' own refresh is every 10 s), against no page.

    .venv/bin/python bench/page_cost.py [--files 100] [--rounds 2] [--seconds 10]

The real daemon forwards to DCMTK storescp; storescu sends `--files` CTs of 0.5 MB on
one association, again until `--seconds` have passed, while /metrics is scraped every 50 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
import urllib.request

from harness import RouterDaemon, ct_files, free_port, rate, rule_file, send, storescp, workdir

PAGES = ("/", "/destinations", "/decisions", "/dead-letters")


def _poll(url: str, every: float, stop: threading.Event, took: list[float]) -> None:
    """GET `url` every `every` s until `stop`; seconds per GET into `took`."""
    while not stop.wait(every):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as rsp:
            rsp.read()
        took.append(time.perf_counter() - start)


def _pages(base: str, stop: threading.Event, took: list[float]) -> None:
    """Load the next page every second, as a browser left open on them would (10x)."""
    i = 0
    while not stop.wait(1.0):
        start = time.perf_counter()
        with urllib.request.urlopen(base + PAGES[i % len(PAGES)], timeout=5) as rsp:
            rsp.read()
        took.append(time.perf_counter() - start)
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="sending per measure")
    args = parser.parse_args()
    base_dir = workdir("page-cost")
    files = ct_files(base_dir / "data", args.files)
    with storescp(base_dir) as (scp_port, _out):
        mport = free_port()
        body = (
            f"metrics: {{port: {mport}}}\n"
            f"destinations:\n  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {scp_port}}}\n"
            "default:\n  - forward: pacs\n"
        )
        daemon = RouterDaemon(base_dir / "router", rule_file(body)).start()
        base = f"http://127.0.0.1:{mport}"
        try:
            for _ in range(args.rounds):
                for with_pages in (False, True):
                    stop = threading.Event()
                    scrapes: list[float] = []
                    pages: list[float] = []
                    threads = [
                        threading.Thread(
                            target=_poll, args=(base + "/metrics", 0.05, stop, scrapes)
                        )
                    ]
                    if with_pages:
                        threads.append(threading.Thread(target=_pages, args=(base, stop, pages)))
                    for t in threads:
                        t.start()
                    seconds, sent = 0.0, 0
                    while seconds < args.seconds:  # long enough for several page loads
                        seconds += send(daemon.port, files, "ROUTER")
                        sent += len(files)
                    stop.set()
                    for t in threads:
                        t.join()
                    scrapes.sort()
                    p95 = statistics.quantiles(scrapes, n=20, method="inclusive")[18]
                    print(
                        f"pages {'every 1 s' if with_pages else 'off     '}: C-STORE"
                        f" {rate(sent, seconds)}; /metrics median"
                        f" {statistics.median(scrapes) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms,"
                        f" max {scrapes[-1] * 1e3:.1f} ms ({len(scrapes)} scrapes)"
                        + (
                            f"; page median {statistics.median(pages) * 1e3:.1f} ms"
                            f" ({len(pages)} loads)"
                            if pages
                            else ""
                        )
                    )
        finally:
            daemon.stop()
    shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
