"""Shared pieces of the benchmarks: test data, plain DCMTK peers, timing, peak memory.

Benchmarks are not tests: they print figures. Every figure is compared with a baseline
measured in the same run on the same machine (DCMTK storescu straight into storescp).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import RouterDaemon  # noqa: E402
from tests.dicomgen import make_ct, make_multiframe  # noqa: E402
from tests.peers import Proc, free_port, wait_port  # noqa: E402
from tests.peers import _descendants as descendants  # noqa: E402

__all__ = [
    "Proc",
    "RouterDaemon",
    "descendants",
    "free_port",
    "make_ct",
    "make_multiframe",
    "rule_file",
    "wait_port",
]


def rule_file(body: str) -> str:
    """A benchmark rule file: the router on loopback, its spool beside the file, then body."""
    return (
        "version: 1\n"
        "listen: {ae_title: ROUTER, host: 127.0.0.1, port: {port}}\n"
        "spool: spool\n"
        "spool_min_free: 1GiB\n" + body
    )


def ct_files(folder: Path, n: int) -> list[Path]:
    """n CT instances of 0.5 MB in one series."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ct{i:05d}.dcm" for i in range(n)]
    study, series = "1.2.826.0.1.3680043.9.7777.1", "1.2.826.0.1.3680043.9.7777.2"
    for path in paths:
        if not path.exists():
            make_ct(path, study_uid=study, series_uid=series)
    return paths


@contextmanager
def storescp(workdir: Path, ae_title: str = "STORESCP") -> Iterator[tuple[int, Path]]:
    """A plain DCMTK storescp writing to disk (+B), any SOP class (-pm) and syntax (+xa)."""
    out = workdir / "received"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # DCMTK leaves Nagle on unless TCP_NODELAY is set: on both ends, or the baseline
    # waits ~40 ms per instance for delayed ACKs.
    proc = Proc(
        ["storescp", "-aet", ae_title, "+B", "-pm", "+xa", "-od", out, str(port)],
        workdir / "storescp.log",
        env={"TCP_NODELAY": "1"},
        name="storescp",
    )
    try:
        wait_port(port, 10, proc=proc)
        yield port, out
    finally:
        proc.stop()


def send(port: int, files: Sequence[Path], called: str) -> float:
    """Send with DCMTK storescu on one association (Nagle off); seconds taken."""
    argv = ["storescu", "-aec", called, "-nh", "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    done = subprocess.run(
        argv, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return took


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def workdir(name: str) -> Path:
    """A scratch folder for one benchmark run (kept under bench/out for inspection)."""
    base = REPO / "bench" / "out"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))


def rate(n: int, seconds: float) -> str:
    """Instances per second and MB/s for n 0.5 MB instances."""
    return f"{n / seconds:7.1f} inst/s {n * 0.5 / seconds:6.1f} MB/s ({seconds:.2f} s)"
