"""Collected series and studies (`forward: {collect: ...}`, `notify:`, `studies:`) over real peers.

The router runs as `dicom-router run` with two receiving workers; DCMTK's storescu sends
a study of three series on two associations at once; DCMTK's storescp is the collecting
destination, and an http.server in this process is the webhook.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import LOOPBACK, StoreSCP, storescu

pytestmark = pytest.mark.interop

Router = Callable[..., RouterDaemon]
FAST_RETRY = "{initial_delay: 0.2s, max_delay: 1s}"


@dataclass
class Study:
    """A study of three series written to disk: its UIDs, and each file's place in it."""

    uid: str
    series: list[str]
    files: list[Path]
    place: dict[str, tuple[int, int]]  # SOP Instance UID -> (SeriesNumber, InstanceNumber)


def make_study(folder: Path, sizes: tuple[int, ...] = (4, 3, 3)) -> Study:
    """A CT study: series 1..N of `sizes` instances, numbered from 1."""
    study = generate_uid()
    series = [generate_uid() for _ in sizes]
    files, place = [], {}
    for number, (uid, count) in enumerate(zip(series, sizes, strict=True), start=1):
        for i in range(1, count + 1):
            path = folder / f"s{number}-{i:03d}.dcm"
            sop = make_ct(
                path, 2048, study_uid=study, series_uid=uid, SeriesNumber=number, InstanceNumber=i
            )
            files.append(path)
            place[str(sop)] = (number, i)
    return Study(study, series, files, place)


class Webhook:
    """A real HTTP server on 127.0.0.1 recording each POST's headers and JSON body."""

    def __init__(self) -> None:
        posts: list[tuple[dict[str, str], Any]] = []
        self.posts = posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_posts(self, n: int, timeout: float = 30.0, settle: float = 2.0) -> list[Any]:
        """Wait for `n` POSTs, then `settle` s more to see no other comes; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        assert len(self.posts) == n, self.posts
        return list(self.posts)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A webhook receiver on a free loopback port; closed after."""
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def rules(scp: StoreSCP, hook_url: str, *, collect: str = "series", studies: str = "") -> str:
    """Two workers; every instance collected for storescp and notified per study."""
    return f"""\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}, workers: 2}}
spool: spool
spool_min_free: 1MiB
studies: {{quiet: 1s{studies}}}
destinations:
  ai: {{ae_title: {scp.ae_title}, host: {LOOPBACK}, port: {scp.port}, retry: {FAST_RETRY}}}
  orch: {{webhook: {{url: "{hook_url}"}}, retry: {FAST_RETRY}}}
rules: []
default:
  - forward: {{to: ai, collect: {collect}}}
  - notify: {{to: orch, on: study}}
"""


def send_at_once(port: int, parts: list[list[Path]]) -> None:
    """Each part on its own storescu association, all at the same time; all acked."""
    results: list[Any] = [None] * len(parts)

    def run(i: int) -> None:
        results[i] = storescu(port, parts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.ok for r in results), results


def associations(scp: StoreSCP) -> int:
    """Associations storescp accepted (its -v log)."""
    return (scp.workdir / "storescp.log").read_text().count("Association Received")


def arrival_order(scp: StoreSCP, study: Study) -> list[tuple[int, int]]:
    """(SeriesNumber, InstanceNumber) of what storescp received, in arrival order.

    By the files' modification times: storescp runs --exec-on-reception without waiting,
    so received.txt may list two quick instances out of order.
    """
    files = sorted(scp.files(), key=lambda p: p.stat().st_mtime_ns)
    return [study.place[str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)] for p in files]


def runs(order: list[tuple[int, int]]) -> dict[int, list[int]]:
    """InstanceNumbers per series, checking each series arrived in one unbroken run."""
    out: dict[int, list[int]] = {}
    for i, (series, instance) in enumerate(order):
        assert i == 0 or series == order[i - 1][0] or series not in out, order
        out.setdefault(series, []).append(instance)
    return out


def units(daemon: RouterDaemon) -> list[tuple[str, str, str | None, float, float | None]]:
    """(level, state, reason, last_at, completed_at) of every received unit, read-only."""
    path = daemon.workdir / "spool" / "queue.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT level, state, reason, last_at, completed_at FROM received_units"
        ).fetchall()


def split(study: Study) -> list[list[Path]]:
    """Two associations' files: series 1 and half of 3 reversed; series 2 and the rest."""
    s1, s2, s3 = ([f for f in study.files if f.name.startswith(f"s{n}-")] for n in (1, 2, 3))
    return [s1 + s3[:2][::-1], s2 + s3[2:]]


def test_a_study_from_two_associations_reaches_storescp_one_association_per_series(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: Webhook
) -> None:
    """Three series sent on two associations at once arrive as three ordered associations."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url))
    send_at_once(daemon.port, split(study))
    store_scp.wait_count(len(study.files))
    assert runs(arrival_order(store_scp, study)) == {1: [1, 2, 3, 4], 2: [1, 2, 3], 3: [1, 2, 3]}
    assert associations(store_scp) == 3
    for level, state, reason, last_at, completed_at in units(daemon):
        assert (state, reason) == ("complete", "quiet"), level
        assert completed_at is not None and completed_at >= last_at + 1.0
    ((_, body),) = webhook.wait_posts(1)
    assert body["study_instance_uid"] == study.uid
    assert (body["instances"], body["reason"], body["calling_ae"]) == (10, "quiet", "STORESCU")
    assert sorted(s["instances"] for s in body["series"]) == [3, 3, 4]
    assert "PatientID" not in body


def test_a_collected_study_goes_over_one_association(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: Webhook
) -> None:
    """collect: study sends the three series together, on one association, in order."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url, collect="study"))
    send_at_once(daemon.port, split(study))
    store_scp.wait_count(len(study.files))
    order = arrival_order(store_scp, study)
    assert order == sorted(order)
    assert associations(store_scp) == 1


def test_kill9_mid_collection_completes_the_study_after_restart(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: Webhook
) -> None:
    """Killed while collecting, the restarted daemon sends every acknowledged instance."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url, studies=", max_wait: 1h").replace("1s", "30s"))
    send_at_once(daemon.port, split(study))
    daemon.kill9()
    assert store_scp.count() == 0  # 30 s quiet: nothing was due yet
    daemon.write_config(rules(store_scp, webhook.url))  # quiet 1 s from here on
    daemon.start()
    store_scp.wait_count(len(study.files))
    assert sorted(arrival_order(store_scp, study)) == sorted(study.place.values())
    assert associations(store_scp) == 3
