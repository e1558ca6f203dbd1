"""`metrics:`: /metrics, /healthz and /readyz of the real daemon, read by real Prometheus tools.

Each test starts `dicom-router run` with `metrics` on a free port, drives it with DCMTK
and reads the endpoint; the forwarder is a separate process, so delivery counts come from
its metric files, summed by the daemon's scrape.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import LOOPBACK, StoreSCP, _descendants, free_port, storescu
from tests.prom import PROMTOOL, Prometheus, get, scrape, scrape_text, value, wait_value

Start = Callable[..., RouterDaemon]
REPO = Path(__file__).resolve().parents[1]
M = "dicom_router_"


def rule_file(metrics_port: int, pacs_port: int, extra: str = "", min_free: str = "1MiB") -> str:
    """A router that stores everything, forwards to `pacs` and refuses TEST* senders."""
    return textwrap.dedent(f"""\
        version: 1
        listen: {{ae_title: ROUTER, host: 127.0.0.1, port: {{port}}}}
        spool: spool
        spool_min_free: {min_free}
        metrics: {{port: {metrics_port}}}
        callers:
          - ae_title: "CT*"
          - ae_title: "TEST*"
        destinations:
          pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {pacs_port},
                  retry: {{initial_delay: 0.2, max_delay: 0.5}}}}
          archive: {{path: "archive/{{SOPInstanceUID}}.dcm"}}
        rules:
          - name: no-test
            match: {{calling_ae: "TEST*"}}
            actions: [{{reject: 0x0124}}]
        default: [{{store: archive}}, {{forward: pacs}}]
        """) + textwrap.dedent(extra)


def cts(folder: Path, n: int) -> list[Path]:
    """n small CT files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ct{i}.dcm" for i in range(n)]
    for path in paths:
        make_ct(path, size=4096)
    return paths


def forwarders(pid: int) -> list[int]:
    """PIDs of the forwarder processes (named dr-forwarder) of the daemon `pid`."""
    found = []
    for child, _ in _descendants(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "dr-forwarder":
                found.append(child)
    return found


@pytest.fixture
def metrics_port() -> int:
    """A free port for the endpoint."""
    return free_port()


def test_metrics_off_when_absent_and_host_defaults_to_loopback() -> None:
    from router.config.model import Config

    base = {"version": 1, "listen": {"ae_title": "R"}, "default": ["discard"]}
    assert Config.model_validate(base).metrics is None
    on = Config.model_validate({**base, "metrics": {"port": 9110}})
    assert on.metrics is not None and on.metrics.host == "127.0.0.1"


def test_status_labels_keep_the_set_of_codes_small() -> None:
    from router.observe.metrics import status_labels

    assert status_labels(0x0000) == ("success", "0x0000")
    assert status_labels(0xB007) == ("warning", "0xB007")
    assert status_labels(0xA7FE) == ("failure", "0xA7xx")
    assert status_labels(0xC123) == ("failure", "0xCxxx")
    assert status_labels(0x1234) == ("failure", "other")


def test_counts_of_worker_processes_add_up_and_survive_a_killed_worker(tmp_path: Path) -> None:
    from tests.metrics_workers import PER_WORKER

    done = subprocess.run(
        [sys.executable, "-m", "tests.metrics_workers", tmp_path],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    sums = json.loads(done.stdout)
    # Two workers and the replacement of the killed one: all three counted.
    assert sums[M + 'received_instances_total{"calling_ae": "CT*"}'] == 3 * PER_WORKER
    assert sums[M + 'received_bytes_total{"calling_ae": "CT*"}'] == 3 * PER_WORKER * 1000
    assert sums[M + "c_store_duration_seconds_count{}"] == 3 * PER_WORKER
    assert sums[M + 'associations_accepted_total{"calling_ae": "CT*"}'] == 3
    # The killed worker's open association is no longer active once it is marked dead.
    assert sums[M + "associations_active{}"] == 0


def test_served_text_passes_promtool_and_carries_no_uid_or_address(
    router: Start, tmp_path: Path, metrics_port: int, store_scp: StoreSCP
) -> None:
    d = router(rule_file(metrics_port, store_scp.port))
    files = cts(tmp_path / "in", 2)
    assert storescu(d.port, files, calling="CT_1", called="ROUTER").ok
    store_scp.wait_count(2)
    wait_value(metrics_port, M + "deliveries_total", lambda v: v == 2,
               destination="pacs", result="delivered")
    text = scrape_text(metrics_port)
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint warnings either
    assert LOOPBACK not in text
    assert "1.2.826" not in text and "CT_1" not in text  # no UIDs, no unconfigured AE titles
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(n.startswith(M) for n in names)


def test_every_label_set_the_config_names_is_zero_at_start_up(
    router: Start, metrics_port: int
) -> None:
    router(rule_file(metrics_port, free_port()))
    s = scrape(metrics_port)
    for rule in ("no-test", "default"):
        assert value(s, M + "rule_matches_total", rule=rule) == 0
    for caller in ("CT*", "TEST*", "other"):
        assert value(s, M + "received_instances_total", calling_ae=caller) == 0
        assert value(s, M + "associations_accepted_total", calling_ae=caller) == 0
    assert value(s, M + "c_store_responses_total", status_class="failure", status="0x0124") == 0
    assert value(s, M + "associations_rejected_total", reason="callers") == 0
    for result in ("delivered", "dead_letter"):
        assert value(s, M + "deliveries_total", destination="pacs", result=result) == 0
    assert value(s, M + "delivery_retries_total", destination="pacs") == 0
    assert value(s, M + "queue_pending", destination="pacs") == 0
    assert value(s, M + "queue_oldest_pending_age_seconds", destination="pacs") == 0
    assert value(s, M + "destination_up", destination="pacs") == 1
    assert wait_value(  # created by the forwarder process, once it runs
        metrics_port, M + "delivery_duration_seconds_count", lambda v: v == 0, destination="pacs"
    ) == 0
    assert value(s, M + "associations_active") == 0


def test_c_stores_are_counted_by_caller_status_and_rule(
    router: Start, tmp_path: Path, metrics_port: int
) -> None:
    d = router(rule_file(metrics_port, free_port()))
    files = cts(tmp_path / "in", 3)
    assert storescu(d.port, files, calling="CT_1", called="ROUTER").ok
    storescu(d.port, files[:1], calling="TEST_1", called="ROUTER")
    storescu(d.port, files[:1], calling="MR_1", called="ROUTER")  # not in callers
    s = scrape(metrics_port)
    assert value(s, M + "received_instances_total", calling_ae="CT*") == 3
    assert value(s, M + "received_instances_total", calling_ae="TEST*") == 1
    spooled = (d.workdir / "archive").glob("*.dcm")  # as received (pynetdicom's file meta)
    assert value(s, M + "received_bytes_total", calling_ae="CT*") == sum(
        f.stat().st_size for f in spooled
    )
    assert value(s, M + "c_store_responses_total", status_class="success", status="0x0000") == 3
    assert value(s, M + "c_store_responses_total", status_class="failure", status="0x0124") == 1
    assert value(s, M + "rule_matches_total", rule="default") == 3
    assert value(s, M + "rule_matches_total", rule="no-test") == 1
    assert value(s, M + "c_store_duration_seconds_count") == 4
    assert value(s, M + "associations_accepted_total", calling_ae="CT*") == 1
    assert value(s, M + "associations_rejected_total", reason="callers") == 1


def test_active_associations_count_an_open_association(
    router: Start, metrics_port: int
) -> None:
    d = router(rule_file(metrics_port, free_port()))
    ae = AE(ae_title="CT_OPEN")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, d.port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        assert wait_value(metrics_port, M + "associations_active", lambda v: v == 1) == 1
    finally:
        assoc.release()
    assert wait_value(metrics_port, M + "associations_active", lambda v: v == 0) == 0


def test_an_association_over_max_associations_is_counted_as_limit(
    router: Start, metrics_port: int
) -> None:
    config = rule_file(metrics_port, free_port()).replace(
        "port: {port}}", "port: {port}, max_associations: 1}"
    )
    d = router(config)
    ae = AE(ae_title="CT_OPEN")
    ae.add_requested_context(Verification)
    first = ae.associate(LOOPBACK, d.port, ae_title="ROUTER")
    try:
        assert first.is_established
        second = ae.associate(LOOPBACK, d.port, ae_title="ROUTER")
        assert second.is_rejected
    finally:
        first.release()
    s = scrape(metrics_port)
    assert value(s, M + "associations_rejected_total", reason="limit") == 1
    assert value(s, M + "associations_accepted_total", calling_ae="CT*") == 1


def test_a_down_destination_shows_queue_depth_age_and_down(
    router: Start, tmp_path: Path, metrics_port: int
) -> None:
    d = router(rule_file(metrics_port, free_port()))
    assert storescu(d.port, cts(tmp_path / "in", 2), calling="CT_1", called="ROUTER").ok
    wait_value(metrics_port, M + "destination_up", lambda v: v == 0, destination="pacs")
    wait_value(
        metrics_port, M + "queue_oldest_pending_age_seconds", lambda v: v >= 1, destination="pacs"
    )
    s = scrape(metrics_port)
    assert value(s, M + "queue_pending", destination="pacs") == 2
    assert value(s, M + "queue_oldest_pending_age_seconds", destination="pacs") >= 1
    assert value(s, M + "destination_unreachable_total", destination="pacs") >= 1
    assert value(s, M + "destination_last_delivery_timestamp_seconds", destination="pacs") == 0


def test_a_value_file_left_empty_by_a_killed_child_does_not_break_the_scrape(
    router: Start, tmp_path: Path, metrics_port: int, store_scp: StoreSCP
) -> None:
    """A child killed between creating its value file and sizing it leaves an empty file:
    /metrics still answers, with every other series, and nothing is logged as a traceback."""
    d = router(rule_file(metrics_port, store_scp.port))
    assert storescu(d.port, cts(tmp_path / "in", 1), calling="CT_1", called="ROUTER").ok
    (d.workdir / "spool" / "metrics" / "counter_999999.db").touch()
    s = scrape(metrics_port)
    assert value(s, M + "received_instances_total", calling_ae="CT*") == 1
    assert "Traceback" not in d.log()


def test_delivery_counters_add_up_across_a_forwarder_killed_and_restarted(
    router: Start, tmp_path: Path, metrics_port: int, store_scp: StoreSCP
) -> None:
    d = router(rule_file(metrics_port, store_scp.port))
    files = cts(tmp_path / "in", 6)
    assert storescu(d.port, files[:3], calling="CT_1", called="ROUTER").ok
    wait_value(metrics_port, M + "deliveries_total", lambda v: v == 3,
               destination="pacs", result="delivered")
    before = scrape(metrics_port)
    assert d.proc is not None
    (forwarder,) = forwarders(d.proc.pid)
    os.kill(forwarder, signal.SIGKILL)
    d.wait_log("forwarder process exited", timeout=10)
    # After the restart the dead forwarder's counts still count: nothing goes backwards.
    after_kill = scrape(metrics_port)
    for name in ("deliveries_total", "sent_bytes_total", "delivery_duration_seconds_count"):
        labels = {"destination": "pacs"} | ({"result": "delivered"} if "deliveries" in name else {})
        assert value(after_kill, M + name, **labels) == value(before, M + name, **labels)
    assert storescu(d.port, files[3:], calling="CT_1", called="ROUTER").ok
    store_scp.wait_count(6)
    wait_value(metrics_port, M + "deliveries_total", lambda v: v == 6,
               destination="pacs", result="delivered")
    (restarted,) = forwarders(d.proc.pid)
    assert restarted != forwarder
    s = scrape(metrics_port)
    spooled = (d.workdir / "archive").glob("*.dcm")  # the same file as was queued
    assert value(s, M + "sent_bytes_total", destination="pacs") == sum(
        f.stat().st_size for f in spooled
    )
    assert value(s, M + "delivery_duration_seconds_count", destination="pacs") == 6
    assert value(s, M + "destination_last_delivery_timestamp_seconds", destination="pacs") > (
        time.time() - 60
    )


def test_dead_letters_are_counted_and_shown_per_destination(
    router: Start, tmp_path: Path, metrics_port: int, store_scp: StoreSCP
) -> None:
    config = rule_file(metrics_port, store_scp.port).replace(
        "retry: {initial_delay: 0.2, max_delay: 0.5}",
        "retry: {initial_delay: 0.2, max_delay: 0.5}, on_status: {0x0000: dead_letter}",
    )
    d = router(config)
    assert storescu(d.port, cts(tmp_path / "in", 1), calling="CT_1", called="ROUTER").ok
    wait_value(metrics_port, M + "deliveries_total", lambda v: v == 1,
               destination="pacs", result="dead_letter")
    assert value(scrape(metrics_port), M + "queue_dead_letters", destination="pacs") == 1


def test_reloads_are_counted_and_the_version_follows(
    router: Start, metrics_port: int
) -> None:
    pacs = free_port()
    d = router(rule_file(metrics_port, pacs))
    first = scrape(metrics_port)
    (version,) = [dict(k[1])["version"] for k in first if k[0] == M + "config_info"]
    started = value(first, M + "config_last_reload_success_timestamp_seconds")
    d.write_config(rule_file(metrics_port, pacs).replace("no-test", "no-tests"))
    # >= 1: the watcher and the once-a-second check may both load the same save.
    wait_value(metrics_port, M + "reloads_total", lambda v: v >= 1, result="success")
    s = scrape(metrics_port)
    assert [dict(k[1])["version"] for k in s if k[0] == M + "config_info"] != [version]
    assert value(s, M + "rule_matches_total", rule="no-tests") == 0
    assert value(s, M + "config_last_reload_success_timestamp_seconds") > started
    failing = """\
        tests:
          - name: wrong
            instance: {calling_ae: CT_1}
            expect: {rule: no-tests}
        """
    d.write_config(rule_file(metrics_port, pacs, failing).replace("no-test", "no-tests"))
    wait_value(metrics_port, M + "reloads_total", lambda v: v >= 1, result="failure")
    s = scrape(metrics_port)
    assert value(s, M + "config_last_reload_successful") == 0
    assert value(s, M + "config_failed_fixtures") == 1


def test_healthz_and_readyz_answer_for_load_balancers(
    router: Start, metrics_port: int
) -> None:
    router(rule_file(metrics_port, free_port()))
    assert get(metrics_port, "/healthz") == (200, "ok\n")
    assert get(metrics_port, "/readyz") == (200, "ready\n")
    assert get(metrics_port, "/nothing")[0] == 404


def test_readyz_is_503_with_the_reason_below_spool_min_free(
    router: Start, metrics_port: int
) -> None:
    router(rule_file(metrics_port, free_port(), min_free="1000TiB"))
    code, body = get(metrics_port, "/readyz")
    assert code == 503
    assert "below spool_min_free" in body
    assert get(metrics_port, "/healthz")[0] == 200


def test_readyz_is_503_while_draining(
    router: Start, tmp_path: Path, metrics_port: int
) -> None:
    d = router(rule_file(metrics_port, free_port()))
    ae = AE(ae_title="CT_OPEN")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, d.port, ae_title="ROUTER")  # holds the drain open
    try:
        d.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        code, body = get(metrics_port, "/readyz")
        while code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            code, body = get(metrics_port, "/readyz")
        assert (code, body) == (503, "not ready: not accepting associations\n")
    finally:
        assoc.release()


def test_silent_clients_beyond_the_limit_are_turned_away(
    router: Start, metrics_port: int
) -> None:
    from router.observe.exporter import MAX_CLIENTS

    router(rule_file(metrics_port, free_port()))
    silent = [socket.create_connection((LOOPBACK, metrics_port)) for _ in range(MAX_CLIENTS)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection((LOOPBACK, metrics_port), timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert extra.recv(100) == b""  # closed unanswered, not queued behind the silent ones
        extra.close()
    finally:
        for s in silent:
            s.close()
    time.sleep(0.3)
    assert get(metrics_port, "/healthz")[0] == 200


def test_a_metrics_port_in_use_stops_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = RouterDaemon(tmp_path / "r", rule_file(port, free_port()))
        with pytest.raises(RuntimeError):
            d.start(timeout=15)
        assert d.proc is not None
        assert d.proc.wait(10) == 2
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in d.log()


def test_a_real_prometheus_scrapes_the_router_and_queries_a_counter(
    router: Start, tmp_path: Path, metrics_port: int
) -> None:
    d = router(rule_file(metrics_port, free_port()))
    with Prometheus(tmp_path / "prometheus", [f"{LOOPBACK}:{metrics_port}"]) as prom:
        prom.wait_scalar('up{job="dicom-router"}', lambda v: v == 1)
        assert storescu(d.port, cts(tmp_path / "in", 3), calling="CT_1", called="ROUTER").ok
        got = prom.wait_scalar(
            M + 'received_instances_total{calling_ae="CT*"}', lambda v: v == 3
        )
        assert got == 3
        assert prom.wait_scalar(M + 'queue_pending{destination="pacs"}', lambda v: v == 3) == 3


def test_alert_rules_pass_promtool_and_fire_as_documented() -> None:
    rules = REPO / "docs" / "monitoring" / "alerts.yml"
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", rules], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", REPO / "tests" / "data" / "alerts-test.yml"],
        capture_output=True, text=True, check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_uses_only_metrics_the_router_serves(
    router: Start, metrics_port: int
) -> None:
    import re

    router(rule_file(metrics_port, free_port()))
    wait_value(  # the forwarder's histogram is there once it runs
        metrics_port, M + "delivery_duration_seconds_count", lambda v: v == 0, destination="pacs"
    )
    served = {k[0] for k in scrape(metrics_port)}
    served |= {n.removesuffix("_bucket") for n in served}
    dashboard = json.loads((REPO / "docs" / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"\b" + M + r"\w+", e)}
    assert exprs and used
    assert used <= served, used - served
