"""End-to-end forwarding: storescu -> router (queued forward) -> storescp, vs storescu -> storescp.

    .venv/bin/python bench/forward_throughput.py [-n 200] [--big-mb 300] [--no-orthanc] [--sync]

The router's time runs from the first byte sent until the last instance is delivered
(its queue is empty: storescp acknowledged it, after writing it). Orthanc forwarding with
a Lua OnStoredInstance -> SendToModality script is measured as the peer baseline, until
storescp has every file. Targets (2 cores): router >= 0.30x the direct hop (issue 8); router peak
RSS <= 200 MiB while routing a 300 MB instance. `--sync` also measures `mode: sync`, where
each C-STORE waits for storescp's answer: the time is storescu's.
"""

from __future__ import annotations

import argparse
import json
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
    storescp,
    workdir,
)

from tests.peers import Proc, free_port, wait_port

CONFIG = rule_file("""\
destinations:
  pacs: {ae_title: STORESCP, host: 127.0.0.1, port: %d}
default: [{forward: pacs}]
""")
SYNC_CONFIG = CONFIG.replace("{forward: pacs}", "{forward: {to: pacs, mode: sync}}")

LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
   SendToModality(instanceId, 'target')
   Delete(instanceId)
end
"""


def pending(spool: Path) -> int:
    """Deliveries not yet done."""
    with sqlite3.connect(spool / "queue.db") as db:
        return int(
            db.execute("SELECT COUNT(*) FROM deliveries WHERE state!='delivered'").fetchone()[0]
        )


def routed(
    base: Path, files: list[Path], label: str, warmup: list[Path], config: str = CONFIG
) -> tuple[float, float, float, float]:
    """Seconds until every file is delivered, peak RSS of the receiving side and of the
    forwarder, and the CPU milliseconds per instance of all the daemon's processes (less
    sensitive to a busy machine than time)."""
    with storescp(base / f"scp-{label}") as (scp_port, _out):
        daemon = RouterDaemon(base / f"router-{label}", config % scp_port).start()
        try:
            assert daemon.proc is not None
            spool = daemon.workdir / "spool"
            # Warm up like the direct baseline: both processes up, one association done.
            send(daemon.port, warmup, "ROUTER")
            while pending(spool):
                time.sleep(0.005)
            cpu = daemon.cpu_seconds()  # every process: main, workers, forwarder
            start = time.perf_counter()
            send(daemon.port, files, "ROUTER")
            while pending(spool):
                time.sleep(0.005)
            took = time.perf_counter() - start
            cpu_ms = (daemon.cpu_seconds() - cpu) * 1000 / len(files)
            forwarder = children(daemon.proc.pid)
            rss_fw = max((peak_rss_mib(p) for p in forwarder), default=0.0)
            rss_main = max(daemon.peak_rss_mib().values())  # main or a receiving worker
        finally:
            daemon.stop()
    return took, rss_main, rss_fw, cpu_ms


def via_orthanc(base: Path, files: list[Path], warmup: list[Path]) -> float | None:
    """Orthanc with a Lua forward: seconds until storescp holds every file."""
    with storescp(base / "scp-orthanc") as (scp_port, out):
        work = base / "orthanc"
        (work / "db").mkdir(parents=True)
        (work / "forward.lua").write_text(LUA)
        dicom, http = free_port(), free_port()
        (work / "orthanc.json").write_text(
            json.dumps(
                {
                    "Name": "bench",
                    "StorageDirectory": str(work / "db"),
                    "IndexDirectory": str(work / "db"),
                    "DicomAet": "ORTHANC",
                    "DicomPort": dicom,
                    "HttpPort": http,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": False,
                    "UnknownSopClassAccepted": True,
                    "Plugins": [],
                    "LuaScripts": [str(work / "forward.lua")],
                    "DicomModalities": {"target": ["STORESCP", "127.0.0.1", scp_port]},
                }
            )
        )
        proc = Proc(
            ["/usr/sbin/Orthanc", str(work / "orthanc.json")],
            work / "orthanc.log",
            env={"TCP_NODELAY": "1"},
            name="Orthanc",
        )
        try:
            wait_port(dicom, 20, proc=proc)
            send(dicom, warmup, "ORTHANC")
            while len(list(out.iterdir())) < len(warmup):
                time.sleep(0.005)
            expected = len(warmup) + len(files)
            start = time.perf_counter()
            send(dicom, files, "ORTHANC")
            deadline = start + 600
            while len(list(out.iterdir())) < expected and time.perf_counter() < deadline:
                time.sleep(0.005)
            # storescp writes as it receives: wait until the last file stops growing
            sizes = None
            while sizes != (sizes := sum(f.stat().st_size for f in out.iterdir())):
                time.sleep(0.02)
            return time.perf_counter() - start
        finally:
            proc.stop(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="number of 0.5 MB CT instances")
    parser.add_argument("--big-mb", type=int, default=300, help="multi-frame size, 0 to skip")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc baseline")
    parser.add_argument("--rounds", type=int, default=5, help="the median of this many runs counts")
    parser.add_argument("--sync", action="store_true", help="also measure mode: sync forwarding")
    args = parser.parse_args()
    base = workdir("forward")
    files = ct_files(base / "data", args.n)
    with storescp(base / "scp-direct") as (port, _out):
        send(port, files[:5], "STORESCP")
        direct = median(send(port, files, "STORESCP") for _ in range(args.rounds))
    warmup = ct_files(base / "warmup", 5)
    runs = [routed(base, files, f"r{i}", warmup) for i in range(args.rounds)]
    took = median(r[0] for r in runs)
    print(f"{args.n} x 0.5 MB CT, storescu TCP_NODELAY=1, median of {args.rounds} runs")
    print(f"  storescu -> storescp (direct)             {args.n / direct:7.1f} inst/s")
    print(
        f"  storescu -> dicom-router -> storescp      {args.n / took:7.1f} inst/s"
        f"   ratio {direct / took:.2f} (target >= 0.30)"
    )
    print(
        f"  router peak RSS: daemon {max(r[1] for r in runs):.0f} MiB,"
        f" forwarder {max(r[2] for r in runs):.0f} MiB"
    )
    if args.sync:
        sync_runs = [routed(base, files, f"s{i}", warmup, SYNC_CONFIG) for i in range(args.rounds)]
        sync = median(r[0] for r in sync_runs)
        print(
            f"  storescu -> dicom-router -> storescp sync {args.n / sync:7.1f} inst/s"
            f"   ratio {direct / sync:.2f}"
        )
        print(
            f"  daemon CPU per instance: queued {median(r[3] for r in runs):.1f} ms,"
            f" sync {median(r[3] for r in sync_runs):.1f} ms"
        )
    if not args.no_orthanc:
        orthanc = via_orthanc(base, files, warmup)
        if orthanc:
            print(
                f"  storescu -> Orthanc (Lua) -> storescp     {args.n / orthanc:7.1f} inst/s"
                f"   ratio {direct / orthanc:.2f}"
            )
    if args.big_mb:
        big = base / "data" / "big.dcm"
        make_multiframe(big, args.big_mb * 1024 * 1024)
        with storescp(base / "scp-big-direct") as (port, _out):
            t_direct = send(port, [big], "STORESCP")
        t_big, rss_main, rss_fw, _cpu = routed(base, [big], "big", warmup)
        print(f"one {args.big_mb} MB multi-frame instance")
        print(f"  direct {t_direct:.2f} s, routed {t_big:.2f} s (ratio {t_direct / t_big:.2f})")
        print(
            f"  router peak RSS: daemon {rss_main:.0f} MiB, forwarder {rss_fw:.0f} MiB"
            " (target <= 200 each)"
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
