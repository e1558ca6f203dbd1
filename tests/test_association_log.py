"""What the daemon logs about associations: the `dropped` warning and `--debug`'s DICOM lines."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from router.observe.ratelimit import BURST
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import storescu
from tests.test_flood import wait_accounted
from tests.test_scp import rule_file
from tests.test_workers import with_workers
from tests.ul import Peer

pytestmark = pytest.mark.interop

DROPPED = "dropped (stalled, timed out or malformed)"


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    """A small CT instance."""
    path = tmp_path / "ct.dcm"
    make_ct(path, size=16 * 1024)
    return path


def test_100_cleanly_released_associations_log_no_dropped_warning(
    router: Callable[..., RouterDaemon], ct: Path
) -> None:
    """An association that ends with A-RELEASE is never logged as dropped (2 workers)."""
    daemon = router(with_workers(2))
    for _ in range(100):
        result = storescu(daemon.port, [ct])
        assert result.ok, result.output
    daemon.wait_log("C-STORE from STORESCU", count=100)
    assert daemon.log().count(DROPPED) == 0, daemon.log()[-3000:]


def test_an_association_closed_without_release_is_still_logged_dropped(
    router: Callable[..., RouterDaemon],
) -> None:
    """A sender that associates and closes the connection without A-RELEASE gets it, once."""
    daemon = router(rule_file())
    with Peer(daemon.port) as peer:
        peer.associate()
    daemon.wait_log(f"association from HOSTILE@127.0.0.1 {DROPPED}")
    assert daemon.log().count(DROPPED) == 1


def test_refused_callers_are_never_logged_dropped_and_a_retry_loop_is_rate_limited(
    router: Callable[..., RouterDaemon], ct: Path
) -> None:
    """30 refusals by `callers` from one address: no `dropped` line, a burst and a summary."""
    daemon = router(rule_file(callers="[{ae_title: CT_1}]"))
    for _ in range(30):
        assert not storescu(daemon.port, [ct], calling="INTRUDER").ok
    lines = wait_accounted(daemon, "rejected: calling AE not in callers", 30)
    assert BURST + 1 <= len(lines) <= 3 * (BURST + 1), lines
    assert daemon.log().count(DROPPED) == 0, daemon.log()[-3000:]


def test_debug_logs_the_negotiation_and_each_dimse_message(
    router: Callable[..., RouterDaemon], ct: Path
) -> None:
    """With --debug one C-STORE shows the contexts offered and accepted and the C-STORE-RQ."""
    daemon = router(with_workers(2), options=("--debug",))
    assert storescu(daemon.port, [ct]).ok
    daemon.wait_log("C-STORE from STORESCU")
    log = daemon.log()
    for line in (
        "INCOMING A-ASSOCIATE-RQ PDU",
        "Context ID:        1 (Proposed)",
        "OUTGOING A-ASSOCIATE-AC PDU",
        "Context ID:        1 (Accepted)",
        "Accepted Transfer Syntax: =Explicit VR Little Endian",
        "Message Type                  : C-STORE RQ",
    ):
        assert re.search(rf"DEBUG pynetdicom\._handlers: [= ]*{re.escape(line)}", log), line


def test_without_debug_no_pynetdicom_line_is_logged(
    router: Callable[..., RouterDaemon], ct: Path
) -> None:
    """Without --debug a C-STORE logs the router's lines only."""
    daemon = router(with_workers(2))
    assert storescu(daemon.port, [ct]).ok
    daemon.wait_log("C-STORE from STORESCU")
    assert "pynetdicom" not in daemon.log()
