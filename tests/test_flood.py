"""A flood of connections that never associate (issue 22 rows 1 and 5), against the real daemon.

The flood comes from 127.0.0.2 (silent connections, and half-sent A-ASSOCIATE-RQs), the
sender under test from 127.0.0.1. The cap of connections without an A-ASSOCIATE-RQ
(128 per worker) evicts the oldest of the address holding the most, so the sender gets
in; the evictions, the peak count and the log lines held back are read from /metrics.
"""

from __future__ import annotations

import collections
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest

from router.net.netlayer import limits
from router.observe.ratelimit import BURST
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import LOOPBACK, free_port, storescu
from tests.prom import scrape, value, wait_value
from tests.test_scp import rule_file
from tests.ul import associate_rq

pytestmark = pytest.mark.interop

FLOODER = "127.0.0.2"
M = "dicom_router_"
EVICTED = "without an A-ASSOCIATE-RQ"
SUMMARY = re.compile(r"\.\.\. and ([0-9,]+) more in the last 10 s like: ")


def flood_rules(metrics_port: int, workers: int | None = None) -> str:
    """Store everything; metrics on; silent connections held their full 10 s."""
    listen = "network_timeout: 60s" + (f", workers: {workers}" if workers else "")
    return (
        rule_file().replace("network_timeout: 2s", listen) + f"metrics: {{port: {metrics_port}}}\n"
    )


class Flood:
    """Connections from FLOODER that never associate: `silent` ones, `half` that send part
    of an A-ASSOCIATE-RQ, then `per_second` new silent ones until the end of the block."""

    def __init__(self, port: int, silent: int, half: int = 0, per_second: float = 0) -> None:
        self.port, self.silent, self.half, self.per_second = port, silent, half, per_second
        self.opened = 0
        self.started = threading.Event()
        self._stop = threading.Event()
        self._socks: collections.deque[socket.socket] = collections.deque()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, payload: bytes = b"") -> None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((FLOODER, 0))
            sock.connect((LOOPBACK, self.port))
            if payload:
                sock.sendall(payload)
        except OSError:
            sock.close()
            return
        self.opened += 1
        self._socks.append(sock)
        while len(self._socks) > 1000:  # long evicted by the router: keep our fds bounded
            self._socks.popleft().close()

    def _run(self) -> None:
        partial = associate_rq()[:30]
        for i in range(self.silent + self.half):
            self._open(partial if i % 3 == 2 and i < 3 * self.half else b"")
        self.started.set()
        while self.per_second and not self._stop.wait(1 / self.per_second):
            self._open()

    def __enter__(self) -> Flood:
        self._thread.start()
        assert self.started.wait(60), "the flood could not open its connections"
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)
        while self._socks:
            self._socks.popleft().close()


@pytest.fixture
def metrics_port() -> int:
    """A free port for the /metrics endpoint."""
    return free_port()


@pytest.fixture(scope="module")
def cts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twenty small CT files."""
    folder = tmp_path_factory.mktemp("cts")
    paths = [folder / f"ct{i}.dcm" for i in range(20)]
    for path in paths:
        make_ct(path, size=4096)
    return paths


def test_a_prompt_sender_stores_while_unassociated_connections_flood_the_cap(
    router: Callable[..., RouterDaemon], metrics_port: int, cts: list[Path]
) -> None:
    """storescu from 127.0.0.1 gets 0x0000 for every C-STORE while 127.0.0.2 floods."""
    daemon = router(flood_rules(metrics_port))
    with Flood(daemon.port, silent=200, half=100, per_second=40) as flood:
        runs = [storescu(daemon.port, cts[i : i + 2], timeout=60) for i in range(0, 20, 2)]
        during = flood.opened
    statuses = [s for run in runs for s in run.statuses]
    assert statuses == [0x0000] * 20, [run.output[-600:] for run in runs if run.returncode]
    samples = scrape(metrics_port)
    assert value(samples, M + "connections_evicted_total") > 0, f"{during} never filled a cap"
    assert value(samples, M + "unassociated_connections_peak") <= limits.MAX_UNASSOCIATED


def _lines(daemon: RouterDaemon, fragment: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if fragment in line]


def _accounted(lines: list[str]) -> int:
    """Events the lines stand for: one per full line, N per `... and N more` summary."""
    return sum(int(m[1].replace(",", "")) if (m := SUMMARY.search(line)) else 1 for line in lines)


def wait_accounted(daemon: RouterDaemon, fragment: str, events: float) -> list[str]:
    """The lines with `fragment`, once they account for `events` (summaries come 10 s on)."""
    deadline = time.monotonic() + 40
    while _accounted(lines := _lines(daemon, fragment)) < events:
        assert time.monotonic() < deadline, (events, lines, daemon.log()[-2000:])
        time.sleep(0.2)
    return lines


def test_a_flood_of_evictions_logs_a_line_and_a_summary_and_counts_them_in_metrics(
    router: Callable[..., RouterDaemon], metrics_port: int
) -> None:
    """600 silent connections: 472 evictions, a few log lines that account for each of them."""
    daemon = router(flood_rules(metrics_port, workers=1))
    with Flood(daemon.port, silent=600) as flood:
        beyond = flood.opened - limits.MAX_UNASSOCIATED
        assert beyond >= 400, flood.opened
        evicted = wait_value(
            metrics_port, M + "connections_evicted_total", lambda v: v >= beyond, timeout=40
        )
        lines = wait_accounted(daemon, EVICTED, evicted)
    assert _accounted(lines) == evicted == beyond, (flood.opened, evicted, lines)
    assert BURST + 1 <= len(lines) <= 3 * (BURST + 1), lines  # a burst and a summary per 10 s
    samples = scrape(metrics_port)
    held = value(samples, M + "log_lines_suppressed_total", logger="router.netlayer")
    assert held >= evicted - len(lines), (held, evicted, lines)
    assert value(samples, M + "unassociated_connections_peak") == limits.MAX_UNASSOCIATED


def test_port_probes_that_close_at_once_log_a_line_and_a_summary(
    router: Callable[..., RouterDaemon], metrics_port: int
) -> None:
    """300 connections closed without a byte: a burst of 'dropped' lines, then one summary."""
    daemon = router(flood_rules(metrics_port, workers=1))
    for _ in range(300):
        with socket.socket() as sock:
            sock.bind((FLOODER, 0))
            sock.connect((LOOPBACK, daemon.port))
    lines = wait_accounted(daemon, "association from ?@127.0.0.2 dropped", 300)
    assert _accounted(lines) == 300 and BURST + 1 <= len(lines) <= 3 * (BURST + 1), lines
