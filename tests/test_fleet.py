"""`fleet:`: two real router daemons mirror to one real PostgreSQL; the fleet view reads it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_series
from tests.peers import FileOutcome, free_port, storescu
from tests.postgres import PostgreSQL, available
from tests.prom import get, scrape, value, wait_value
from tests.test_forward import Router, dest, rule_file, wait_until

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not available(), reason="Debian's postgresql package is not installed"),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgreSQL]:
    """One throwaway PostgreSQL for the module (each test uses its own node names)."""
    server = PostgreSQL().start()
    try:
        yield server
    finally:
        server.remove()


def dsn_file(folder: Path, dsn: str, mode: int = 0o600) -> Path:
    """Write a connection string to a file readable by its owner only (by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.dsn"
    path.write_text(dsn + "\n")
    path.chmod(mode)
    return path


def node_file(tmp_path: Path, dsn: str, node: str, extra: str = "") -> str:
    """A rule file forwarding to a PACS that is down (deliveries wait) and mirroring as `node`."""
    dsn_path = dsn_file(tmp_path / node, dsn)
    return rule_file({"pacs": dest("PACS", free_port())}, ["forward: pacs"]) + (
        f"fleet: {{postgresql_file: {dsn_path}, node: {node}, interval: 0.2s,"
        f" stale_after: 3s}}\n{extra}"
    )


def fleet_cli(d: RouterDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`dicom-router ARGS` run with this daemon's rule file."""
    return subprocess.run(
        [str(DICOM_ROUTER), *args], cwd=d.workdir, capture_output=True, text=True, timeout=60
    )


def study(tmp_path: Path, n: int) -> tuple[list[Path], str]:
    """n small CT instances of one new study; their paths and the Study Instance UID."""
    from pydicom import dcmread

    paths = make_series(tmp_path / f"study-{time.monotonic_ns()}", n, size=2048)
    return paths, str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def two_nodes(
    router: Router, tmp_path: Path, pg: PostgreSQL, *names: str
) -> list[RouterDaemon]:
    """Start one daemon per node name, each with its own spool, all mirroring to `pg`."""
    return [router(node_file(tmp_path, pg.dsn, name)) for name in names]


def send_study(d: RouterDaemon, tmp_path: Path, n: int) -> None:
    """Send a new study of n instances to the node; each must be answered 0x0000."""
    assert {f.status for f in storescu(d.port, study(tmp_path, n)[0]).files} == {0x0000}


def mirrored(pg: PostgreSQL, node: str, table: str) -> int:
    """Rows of `node` in one of the fleet tables."""
    return int(pg.query(f"SELECT COUNT(*) FROM {table} WHERE node=%s", node)[0][0])


def test_a_study_sent_to_one_node_is_found_by_trace_fleet_run_on_the_other(
    router: Router, tmp_path: Path, pg: PostgreSQL
) -> None:
    """trace --fleet with node B's rule file shows node A's decisions, each line naming A."""
    a, b = two_nodes(router, tmp_path, pg, "trace-a", "trace-b")
    paths, study_uid = study(tmp_path, 3)
    assert {f.status for f in storescu(a.port, paths).files} == {0x0000}

    def found() -> str | None:
        done = fleet_cli(b, "trace", "--fleet", str(b.config_path), study_uid)
        lines = done.stdout.splitlines()
        return done.stdout if sum("[trace-a]" in x and "-> pacs" in x for x in lines) == 3 else None

    out = wait_until("trace --fleet to show the 3 deliveries", found, timeout=20)
    decisions = [x for x in out.splitlines() if x.startswith("[")]
    assert len(decisions) == 3 and all(x.startswith("[trace-a] ") for x in decisions), out
    assert "node trace-a: mirrored" in out
    local = fleet_cli(b, "trace", str(b.config_path), study_uid)
    assert local.returncode == 1  # B's own log has never seen it


def test_queue_fleet_shows_the_queues_of_both_nodes(
    router: Router, tmp_path: Path, pg: PostgreSQL
) -> None:
    """queue --fleet lists each node's waiting deliveries and figures, per node."""
    a, b = two_nodes(router, tmp_path, pg, "queue-a", "queue-b")
    send_study(a, tmp_path, 2)
    send_study(b, tmp_path, 1)

    def listed() -> str | None:
        out = fleet_cli(a, "queue", "--fleet", str(a.config_path)).stdout
        wanted = ("queue-a: pacs: 2 pending, 0 dead letters", "queue-b: pacs: 1 pending")
        return out if all(w in out for w in wanted) else None

    out = wait_until("queue --fleet to show both nodes", listed, timeout=20)
    rows = [x.split()[0] for x in out.splitlines()[1:] if " pending " in x]
    assert sorted(r for r in rows if r.startswith("queue-")) == ["queue-a", "queue-a", "queue-b"]


def test_postgresql_killed_mid_stream_changes_no_status_and_the_mirror_catches_up(
    router: Router, tmp_path: Path, pg: PostgreSQL
) -> None:
    """PostgreSQL killed at the 10th of 60 C-STOREs: all 0x0000; all mirrored 10 s after restart."""
    d = router(node_file(tmp_path, pg.dsn, "outage"))
    paths, _ = study(tmp_path, 60)
    killed: list[float] = []

    def on_response(outcome: FileOutcome) -> None:
        if not killed and outcome.path == str(paths[9]):
            pg.kill()
            killed.append(time.monotonic())

    result = storescu(d.port, paths, on_response=on_response)
    assert killed and [f.status for f in result.files] == [0x0000] * 60
    d.wait_log("fleet mirror: PostgreSQL unusable", timeout=20)
    pg.start()
    restarted = time.monotonic()
    wait_until(
        "60 decisions and 60 deliveries mirrored",
        lambda: mirrored(pg, "outage", "decisions") == 60
        and mirrored(pg, "outage", "deliveries") == 60,
        timeout=10,
    )
    assert time.monotonic() - restarted < 10


def test_the_mirror_lag_is_a_metric_and_a_readyz_detail_not_a_failure(
    router: Router, tmp_path: Path
) -> None:
    """PostgreSQL unreachable: the lag counts the rows waiting; /readyz stays 200 and says why."""
    metrics = free_port()
    d = router(
        node_file(tmp_path, f"host=127.0.0.1 port={free_port()} user=nobody", "lagging",
                  f"metrics: {{host: 127.0.0.1, port: {metrics}}}\n")
    )
    send_study(d, tmp_path, 4)
    wait_value(metrics, "dicom_router_fleet_mirror_lag_rows", lambda v: v == 8)
    assert value(scrape(metrics), "dicom_router_fleet_mirror_lag_seconds") > 0
    code, body = get(metrics, "/readyz")
    assert code == 200 and body.startswith("ready\nfleet mirror (lagging): 8 rows"), body
    assert "PostgreSQL failing for" in body


def test_a_node_that_stopped_mirroring_is_shown_stale_with_its_stranded_queue(
    router: Router, tmp_path: Path, pg: PostgreSQL
) -> None:
    """A stopped node: queue --fleet from another says STALE, its last time, stranded pending."""
    gone, viewer = two_nodes(router, tmp_path, pg, "stale-gone", "stale-viewer")
    send_study(gone, tmp_path, 2)
    wait_until("2 pending mirrored", lambda: pg.query(
        "SELECT pending FROM queues WHERE node='stale-gone'") == [(2,)])
    gone.stop()

    def stale() -> str | None:
        out = fleet_cli(viewer, "queue", "--fleet", str(viewer.config_path)).stdout
        return out if "node stale-gone: STALE, last mirror " in out else None

    out = wait_until("stale-gone shown as stale", stale, timeout=20)
    assert "stale-gone: pacs: 2 pending, 0 dead letters (stranded on a stale node)" in out
    assert "node stale-viewer: mirrored" in out


def test_check_warns_about_a_world_readable_connection_string(tmp_path: Path) -> None:
    """`check` points at a DSN file every user can read (it holds a password)."""
    path = dsn_file(tmp_path, "host=127.0.0.1 password=secret", mode=0o644)
    rules = tmp_path / "router.yaml"
    rules.write_text(
        rule_file({"pacs": dest("PACS", 11113)}, ["forward: pacs"]).replace("{port}", "11112")
        + f"fleet: {{postgresql_file: {path}, node: gw-1}}\n"
    )
    done = subprocess.run(
        [str(DICOM_ROUTER), "check", "--strict", str(rules)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert f"fleet.postgresql_file: {path} is readable by every user" in done.stdout
