"""A destination that is back gets its queue now: `queue FILE retry`, or a C-ECHO probe."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from router.destinations.worker import PROBE_SECONDS
from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.peers import StoreSCP, free_port
from tests.test_forward import Router, cli, dest, one_instance, rule_file, send, states, wait_until

pytestmark = pytest.mark.interop

# A pause far longer than the test may wait: only `queue retry` can end it in time.
LONG_RETRY = "{initial_delay: 120s, max_delay: 300s}"


def test_queue_retry_sends_what_waits_for_a_destination_that_is_back(
    router: Router, tmp_path: Path
) -> None:
    """PACS down, then up: `queue retry --destination pacs` delivers at once, not in 60+ s."""
    d, pacs = pacs_back_after_three_queued(router, tmp_path)
    try:
        out = cli(d, "queue", str(d.config_path), "retry", "--destination", "pacs")
        assert out.strip() == "0 dead letters queued again, 3 waiting deliveries due now"
        start = time.monotonic()
        pacs.wait_count(3, timeout=20)
        assert time.monotonic() - start < 20
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"] * 3)
    finally:
        pacs.stop()
    d.wait_log("destination pacs: pause ended by `queue retry`")


def test_a_paused_destination_that_answers_a_c_echo_gets_its_queue_at_once(
    router: Router, tmp_path: Path
) -> None:
    """PACS down, then up: the forwarder's C-ECHO probe ends the 120 s pause by itself."""
    d, pacs = pacs_back_after_three_queued(router, tmp_path)
    try:
        start = time.monotonic()
        pacs.wait_count(3, timeout=PROBE_SECONDS + 20)
        assert time.monotonic() - start < PROBE_SECONDS + 20  # not the 60-120 s pause
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"] * 3)
    finally:
        pacs.stop()
    d.wait_log("destination pacs reachable again: 3 waiting deliveries due now")


def test_queue_retry_of_an_unknown_destination_exits_1_with_did_you_mean(
    router: Router, tmp_path: Path
) -> None:
    """A typo in --destination is an error naming the close destination; nothing changes."""
    d = router(rule_file({"pacs": dest("PACS", free_port())}, ["forward: pacs"]))
    done = run(d, "retry", "--destination", "pcas")
    assert done.returncode == 1, done
    assert done.stderr.strip() == (
        "dicom-router: unknown destination 'pcas'; did you mean 'pacs'?"
    ), done.stderr
    assert done.stdout == ""


def test_queue_list_with_all_exits_1(router: Router) -> None:
    """--all belongs to purge: `list --all` is refused instead of ignored."""
    d = router(rule_file({"pacs": dest("PACS", free_port())}, ["forward: pacs"]))
    done = run(d, "list", "--all")
    assert done.returncode == 1, done
    assert "--all applies to purge only" in done.stderr


def pacs_back_after_three_queued(router: Router, tmp_path: Path) -> tuple[RouterDaemon, StoreSCP]:
    """Three instances queued for a PACS that was down (a long pause); the PACS now up."""
    pacs = StoreSCP(tmp_path / "pacs", port=free_port())  # not started: down
    files = [one_instance(tmp_path, f"ct{i}.dcm")[0] for i in range(3)]
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port, retry=LONG_RETRY)},
                         ["forward: pacs"]))  # fmt: skip
    assert send(d, files) == [0] * 3
    d.wait_log("destination pacs unreachable")
    pacs.start()
    return d, pacs


def run(d: RouterDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`dicom-router queue FILE ARGS` next to the daemon, its exit code kept."""
    return subprocess.run(
        [str(DICOM_ROUTER), "queue", str(d.config_path), *args],
        cwd=d.workdir, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
