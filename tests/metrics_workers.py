"""A supervisor and receiving worker processes counting through router.observe.metrics.

    python -m tests.metrics_workers SPOOL

What `listen.workers` will do, reduced to the metrics: the supervisor enables metrics
(before spawning), starts two workers that each count C-STOREs and hold one association
open, kills one with SIGKILL after it counted, marks it dead, starts a replacement, then
prints the summed samples as JSON: `{"name{labels}": value}`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from router.config.model import Config
from router.observe import metrics

CONFIG = {
    "version": 1,
    "listen": {"ae_title": "R"},
    "callers": [{"ae_title": "CT*"}],
    "default": ["discard"],
}
PER_WORKER = 250


def worker(path: str, done: Any, hold: bool) -> None:
    """Count PER_WORKER C-STOREs and open one association; then wait to be killed or stop."""
    metrics.init_process(os.environ.get(metrics.ENV))
    metrics.config_applied(Config.model_validate(CONFIG))
    token = object()
    metrics.association_accepted(token, "CT_1")
    for _ in range(PER_WORKER):
        metrics.c_store_done(metrics.c_store_started(Path(path)), "CT_1", 0, "default")
    if not hold:
        metrics.association_closed(token)
    done.set()
    signal.pause()  # until killed or terminated


def main(spool: Path) -> None:
    """Run the scenario and print the sums."""
    metrics.enable(spool, Config.model_validate(CONFIG))
    sample = spool / "sample.dcm"
    sample.write_bytes(b"x" * 1000)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for hold in (True, False):
        done = ctx.Event()
        proc = ctx.Process(target=worker, args=(str(sample), done, hold))
        proc.start()
        assert done.wait(60)
        procs.append(proc)
    crashed = procs[0]
    os.kill(crashed.pid, signal.SIGKILL)  # type: ignore[arg-type]
    crashed.join()
    metrics.process_dead(crashed.pid)
    done = ctx.Event()
    replacement = ctx.Process(target=worker, args=(str(sample), done, False))
    replacement.start()
    assert done.wait(60)
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    out = {
        f"{s.name}{json.dumps(s.labels, sort_keys=True)}": s.value
        for family in registry.collect()
        for s in family.samples
    }
    for proc in (procs[1], replacement):
        proc.terminate()
        proc.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
