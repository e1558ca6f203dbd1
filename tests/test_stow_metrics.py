"""STOW-RS destinations in /metrics, series for series like DICOM ones (issue 15 finding 6).

The real daemon with `metrics:` forwards to three STOW-RS destinations: a real Orthanc
with its DICOMweb plugin (`web`, delivers), the scripted server of test_stow.py answering
every instance with FailureReason 0xA900 (`refusing`, dead letters), and a port where
nothing listens (`down`, pending). Every delivery counter and gauge must have a series
for each, at zero from start-up, then the values the deliveries give.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dicomgen import make_series
from tests.peers import DicomWebOrthanc, free_port, storescu
from tests.prom import Samples, scrape, value, wait_value
from tests.test_forward import states, wait_until
from tests.test_stow import (
    FAST_RETRY,
    Router,
    StowServer,
    failed,
    orthanc_dest,
    scripted,
    start_router,
)

pytestmark = pytest.mark.interop

M = "dicom_router_"
N = 3
DESTINATIONS = ("web", "refusing", "down")


@pytest.fixture
def refusing_server() -> Iterator[StowServer]:
    """A STOW-RS server that lists every instance as failed with 0xA900 (permanent)."""
    server = StowServer(script=[failed(0xA900)] * 50)
    try:
        yield server
    finally:
        server.stop()


def rule_file(web: str, refusing: str, down: str, metrics_port: int) -> str:
    """Three STOW-RS destinations, every instance forwarded to each; metrics on."""
    return (
        "version: 1\n"
        "listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}\n"
        "spool: spool\n"
        "spool_min_free: 1MiB\n"
        f"metrics: {{port: {metrics_port}}}\n"
        "destinations:\n"
        f"  web: {web}\n"
        f"  refusing: {refusing}\n"
        f"  down: {down}\n"
        "default: [forward: web, forward: refusing, forward: down]\n"
    )


def series(samples: Samples, name: str, destination: str, **labels: str) -> float:
    """One destination's sample of `name` (KeyError naming the label sets if missing)."""
    return value(samples, M + name, destination=destination, **labels)


def test_stow_destinations_have_every_delivery_series_with_their_values(
    router: Router,
    web_orthanc: DicomWebOrthanc,
    refusing_server: StowServer,
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    down = f"{{url: http://127.0.0.1:{free_port()}/dicom-web, retry: {FAST_RETRY}}}"
    config = rule_file(orthanc_dest(web_orthanc), scripted(refusing_server), down, metrics_port)
    d = start_router(router, tmp_path, config, "s3cret")

    at_start = scrape(metrics_port)
    for name in DESTINATIONS:  # created at zero by the config, before any delivery
        for result in ("delivered", "dead_letter"):
            assert series(at_start, "deliveries_total", name, result=result) == 0
        for counter in ("delivery_retries_total", "destination_unreachable_total",
                        "sent_bytes_total", "queue_pending", "queue_dead_letters",
                        "queue_oldest_pending_age_seconds",
                        "destination_last_delivery_timestamp_seconds"):
            assert series(at_start, counter, name) == 0, counter
        assert series(at_start, "destination_up", name) == 1

    files = make_series(tmp_path / "in", N)
    sent_at = time.time()
    assert storescu(d.port, files).ok
    web_orthanc.wait_count(N)
    wait_until("delivered to web", lambda: states(d, "web") == ["delivered"] * N)
    wait_until("dead letters of refusing", lambda: states(d, "refusing") == ["dead"] * N)
    wait_value(metrics_port, M + "destination_up", lambda v: v == 0, destination="down")
    wait_value(metrics_port, M + "deliveries_total", lambda v: v == N,
               destination="refusing", result="dead_letter")
    s = scrape(metrics_port)
    scraped_at = time.time()

    # deliveries, by result
    assert series(s, "deliveries_total", "web", result="delivered") == N
    assert series(s, "deliveries_total", "web", result="dead_letter") == 0
    assert series(s, "deliveries_total", "refusing", result="dead_letter") == N
    assert series(s, "deliveries_total", "refusing", result="delivered") == 0
    assert series(s, "deliveries_total", "down", result="delivered") == 0
    # the queue, read from the spool at scrape time
    assert [series(s, "queue_pending", n) for n in DESTINATIONS] == [0, 0, N]
    assert [series(s, "queue_dead_letters", n) for n in DESTINATIONS] == [0, N, 0]
    assert series(s, "queue_oldest_pending_age_seconds", "web") == 0
    assert series(s, "queue_oldest_pending_age_seconds", "refusing") == 0
    age = series(s, "queue_oldest_pending_age_seconds", "down")
    assert 0 < age <= scraped_at - sent_at + 1
    # what was sent: the same spooled files went to web and to refusing
    posted = sum(len(part) for r in refusing_server.requests for part in r.parts)
    assert posted > 0
    assert series(s, "sent_bytes_total", "refusing") == posted
    assert series(s, "sent_bytes_total", "web") == posted
    assert series(s, "sent_bytes_total", "down") == 0
    assert series(s, "delivery_duration_seconds_count", "refusing") == len(
        refusing_server.requests
    )
    assert 1 <= series(s, "delivery_duration_seconds_count", "web") <= N
    assert series(s, "delivery_duration_seconds_sum", "web") > 0
    assert series(s, "delivery_duration_seconds_count", "down") == 0
    # reachability and the last delivery
    assert [series(s, "destination_up", n) for n in DESTINATIONS] == [1, 1, 0]
    assert series(s, "destination_unreachable_total", "down") >= 1
    assert series(s, "destination_unreachable_total", "web") == 0
    assert sent_at <= series(s, "destination_last_delivery_timestamp_seconds", "web") <= scraped_at
    assert series(s, "destination_last_delivery_timestamp_seconds", "refusing") == 0
    assert [series(s, "delivery_retries_total", n) for n in DESTINATIONS] == [0, 0, 0]
