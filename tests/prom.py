"""Prometheus peers for tests and benchmarks: scrape `/metrics`, run a real Prometheus.

`scrape()` reads the router's endpoint with prometheus-client's own parser; `Prometheus`
runs /usr/bin/prometheus on a free loopback port with its config and data in a temp
folder, scraping given targets, and answers PromQL through its HTTP API.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

from tests.peers import LOOPBACK, Proc, free_port, wait_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path; (HTTP status, body) whatever the status."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=timeout) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape_text(port: int) -> str:
    """The body of /metrics (Prometheus text format)."""
    code, body = get(port, "/metrics")
    assert code == 200, body
    return body


def parse(text: str) -> Samples:
    """Every sample of a /metrics body, keyed by (name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(port: int) -> Samples:
    """Scrape and parse /metrics."""
    return parse(scrape_text(port))


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError (with the names present) if it is missing."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        near = sorted({dict(k[1]).__repr__() for k in samples if k[0] == name})
        raise KeyError(f"{name}{labels} not served; label sets present: {near}")
    return samples[key]


def wait_value(
    port: int, name: str, check: Callable[[float], bool], timeout: float = 20.0, **labels: str
) -> float:
    """Scrape until the sample satisfies `check`; return its value."""
    deadline = time.monotonic() + timeout
    got: float | None = None
    while time.monotonic() < deadline:
        try:
            got = value(scrape(port), name, **labels)
        except KeyError:
            got = None
        if got is not None and check(got):
            return got
        time.sleep(0.1)
    raise TimeoutError(f"{name}{labels} stayed at {got}")


class Prometheus:
    """A real Prometheus scraping `targets` (host:port) every `interval` seconds."""

    def __init__(self, workdir: Path, targets: Iterable[str], interval: str = "1s") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": "dicom-router", "static_configs": [{"targets": list(targets)}]}
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.proc: Proc | None = None

    def start(self, timeout: float = 30.0) -> Self:
        """Start Prometheus and wait until its API answers."""
        self.proc = Proc(
            [
                PROMETHEUS,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
            name="prometheus",
        )
        wait_port(self.port, timeout, proc=self.proc)
        # The port opens before the storage is loaded; until then the API answers 503.
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/-/ready", timeout=5):
                    return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it by PID."""
        if self.proc is not None:
            self.proc.stop()

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query's result vector."""
        url = f"http://{LOOPBACK}:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as rsp:
            body = json.load(rsp)
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def wait_scalar(
        self, promql: str, check: Callable[[float], bool], timeout: float = 30.0
    ) -> float:
        """Query until the single result satisfies `check`; return it."""
        deadline = time.monotonic() + timeout
        got: float | None = None
        while time.monotonic() < deadline:
            result = self.query(promql)
            if len(result) == 1:
                got = float(result[0]["value"][1])  # type: ignore[index]
                if check(got):
                    return got
            time.sleep(0.25)
        raise TimeoutError(f"{promql} stayed at {got}\n{self.proc.log_tail() if self.proc else ''}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
