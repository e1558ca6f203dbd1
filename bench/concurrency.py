"""Several modalities at once: K storescu processes, each with its own study, into each peer.

    .venv/bin/python bench/concurrency.py [-n 100] [-k 1 4 8] [--rounds 3] [--workers N] [--fleet]

For each K, the peers run interleaved in one round: DCMTK storescp --fork (no fsync),
Orthanc with SyncStorageArea (fsync per instance: the durable peer) and dicom-router
(store rule; `listen.workers` as given, default the daemon's own default). Prints the
aggregate inst/s (median of the rounds), the router's ratios to both peers and its CPU
per instance (all its processes). --fleet: the router mirrors to a throwaway PostgreSQL
(`fleet:`, tests/postgres.py) and the mirror's highest lag while senders send is printed.
Targets on 2 cores: K=1 router >= 1.5 x Orthanc and
>= 0.35 x storescp; K=8 router >= 1.0 x Orthanc and never below its own K=1 rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from harness import (
    Proc,
    RouterDaemon,
    descendants,
    free_port,
    make_ct,
    rule_file,
    wait_port,
    workdir,
)

CONFIG = rule_file("""\
destinations:
  archive: {path: "archive/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"}
default: [{store: archive}]
""")


def studies(folder: Path, k: int, n: int) -> list[list[Path]]:
    """k studies of n 0.5 MB CT instances each (made once, kept under bench/out)."""
    out = []
    for s in range(k):
        sub = folder / f"study{s}"
        sub.mkdir(parents=True, exist_ok=True)
        paths = [sub / f"ct{i:04d}.dcm" for i in range(n)]
        for path in paths:
            if not path.exists():
                make_ct(
                    path,
                    study_uid=f"1.2.826.0.1.3680043.9.7777.10.{s}",
                    series_uid=f"1.2.826.0.1.3680043.9.7777.11.{s}",
                )
        out.append(paths)
    return out


def send_all(port: int, called: str, batches: Sequence[Sequence[Path]]) -> float:
    """Start one storescu per batch at once; seconds until the last has finished."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", called, "-nh", "127.0.0.1", str(port), *map(str, batch)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for batch in batches
    ]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    took = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"storescu failed: {errors[0][-2000:]!r}")
    return took


def cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def storescp_fork(base: Path) -> Iterator[tuple[int, list[int]]]:
    """DCMTK storescp, one child process per association (--fork), writing to disk."""
    out = base / "received"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Proc(
        ["storescp", "--fork", "-aet", "STORESCP", "+B", "-pm", "+xa", "-od", out, str(port)],
        base / "storescp.log",
        env={"TCP_NODELAY": "1"},
        name="storescp",
    )
    try:
        wait_port(port, 10, proc=proc)
        yield port, [proc.pid]
    finally:
        proc.stop()


@contextmanager
def orthanc_sync(base: Path) -> Iterator[tuple[int, list[int]]]:
    """Orthanc with SyncStorageArea (it fsyncs each instance before answering)."""
    (base / "db").mkdir(parents=True, exist_ok=True)
    dicom, http = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(base / "db"),
        "IndexDirectory": str(base / "db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "SyncStorageArea": True,
        "StorageCompression": False,
        "Plugins": [],
    }
    (base / "orthanc.json").write_text(json.dumps(config))
    proc = Proc(
        ["/usr/sbin/Orthanc", str(base / "orthanc.json")],
        base / "orthanc.log",
        env={"TCP_NODELAY": "1"},
        name="Orthanc",
    )
    try:
        wait_port(dicom, 20, proc=proc)
        yield dicom, [proc.pid]
    finally:
        proc.stop(timeout=5)


def router_factory(
    workers: int | None, fleet_dsn: str | None = None
) -> Callable[[Path], Iterator[tuple[int, list[int]]]]:
    """dicom-router with the store rule (and `listen.workers`, `fleet:` when given)."""
    config = CONFIG
    if workers is not None:
        config = config.replace("port: {port}}", f"port: {{port}}, workers: {workers}}}")

    @contextmanager
    def run(base: Path) -> Iterator[tuple[int, list[int]]]:
        text = config
        if fleet_dsn is not None:  # a node name per run: each run has a fresh spool
            text += f'fleet: {{postgresql: "{fleet_dsn}", node: "{base.name}"}}\n'
        daemon = RouterDaemon(base, text).start()
        assert daemon.proc is not None
        try:
            time.sleep(0.5)  # every worker listening
            pids = [daemon.proc.pid, *(pid for pid, _ in descendants(daemon.proc.pid))]
            yield daemon.port, pids
        finally:
            daemon.stop()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="instances per sender")
    parser.add_argument("-k", type=int, nargs="+", default=[1, 4, 8], help="senders at once")
    parser.add_argument("--rounds", type=int, default=3, help="the median of this many counts")
    parser.add_argument("--workers", type=int, default=None, help="listen.workers for the router")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/concurrency-*")
    parser.add_argument("--fleet", action="store_true", help="the router mirrors to PostgreSQL")
    args = parser.parse_args()
    postgres = None
    if args.fleet:
        from tests.postgres import PostgreSQL

        postgres = PostgreSQL().start()
    try:
        _bench(args, postgres.dsn if postgres else None)
    finally:
        if postgres is not None:
            postgres.remove()


class LagWatch:
    """The mirror's highest lag (rows, seconds) seen in SPOOL/fleet-mirror.json, polled."""

    def __init__(self, spool: Path) -> None:
        self.file = spool / "fleet-mirror.json"
        self.rows, self.seconds = 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            try:
                state = json.loads(self.file.read_text())
            except (OSError, ValueError):
                continue
            self.rows = max(self.rows, state["lag_rows"])
            self.seconds = max(self.seconds, state["lag_seconds"])

    def stop(self) -> tuple[int, float]:
        """Stop polling; the highest (rows, seconds)."""
        self._stop.set()
        self._thread.join()
        return self.rows, self.seconds


def _bench(args: argparse.Namespace, fleet_dsn: str | None) -> None:
    base = workdir("concurrency")
    data = studies(base.parent / "concurrency-data", max(args.k), args.n)
    peers: dict[str, tuple[str, Callable[[Path], Any]]] = {
        "storescp --fork": ("STORESCP", storescp_fork),
        "Orthanc (SyncStorageArea)": ("ORTHANC", orthanc_sync),
        "dicom-router": ("ROUTER", router_factory(args.workers, fleet_dsn)),
    }
    lags: dict[int, list[tuple[int, float]]] = {}
    results: dict[tuple[str, int], list[float]] = {}
    router_cpu: dict[int, list[float]] = {}
    for k in args.k:
        for round_ in range(args.rounds):
            for name, (called, start) in peers.items():
                with start(base / f"{name.split()[0]}-{k}-{round_}") as (port, pids):
                    send_all(port, called, [batch[:5] for batch in data[:k]])  # warm-up
                    before = cpu(pids)
                    where = base / f"{name.split()[0]}-{k}-{round_}" / "spool"
                    watch = LagWatch(where) if fleet_dsn and name == "dicom-router" else None
                    took = send_all(port, called, data[:k])
                    used = cpu(pids) - before
                    if watch is not None:
                        lags.setdefault(k, []).append(watch.stop())
                results.setdefault((name, k), []).append(k * args.n / took)
                if name == "dicom-router":
                    router_cpu.setdefault(k, []).append(used / (k * args.n) * 1000)
    print(
        f"K storescu at once, {args.n} x 0.5 MB CT each (own study), median of {args.rounds}"
        f" rounds, inst/s; router workers: {args.workers or 'default'}"
    )
    columns = "".join(f"{name:>28}" for name in peers)
    print(f"{'K':>3} {columns}  router/Orthanc  router/storescp  router ms CPU/inst")
    for k in args.k:
        rates = {name: median(results[(name, k)]) for name in peers}
        router = rates["dicom-router"]
        print(
            f"{k:>3} "
            + "".join(f"{rates[name]:>28.1f}" for name in peers)
            + f"  {router / rates['Orthanc (SyncStorageArea)']:>14.2f}"
            + f"  {router / rates['storescp --fork']:>15.2f}"
            + f"  {median(router_cpu[k]):>18.2f}"
        )
    for k, seen in lags.items():
        print(f"K={k}: the fleet mirror's highest lag while sending, per round:"
              f" {', '.join(f'{rows} rows / {secs:.1f} s' for rows, secs in seen)}")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
