"""Storage Commitment, answer: relayed: a modality is told "committed" only for what the PACS
itself committed (Orthanc as the PACS: it answers N-ACTION and reports on a new association)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from router.destinations.relay import MAX_OPEN_RELAYS
from router.spool.commitments import Item, Transaction
from router.spool.database import Spool
from tests.daemon import RouterDaemon
from tests.peers import LOOPBACK, CommitmentModality, Orthanc, free_port, storescu
from tests.prom import wait_value
from tests.test_commitment import assert_all_committed, send, study
from tests.test_studies import cli

RULES = """\
version: 1
listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}
spool: spool
spool_min_free: 1MiB
callers:
  - {ae_title: MODALITY, commitment_port: %(commit)d}
  - {ae_title: STORESCU}
storage_commitment: {answer: relayed, timeout: %(timeout)s}
destinations:
  pacs:
    ae_title: PACS
    host: 127.0.0.1
    port: %(pacs)d
    commitment: true
    retry: {initial_delay: 0.2s, max_delay: 0.5s}
default:
  - forward: pacs
"""


def peers(
    tmp_path: Path,
    modality: CommitmentModality,
    *,
    lua: str = "",
    report_to: int | None = None,
    extra: str = "",
    forward: str = "pacs",
) -> tuple[RouterDaemon, Orthanc]:
    """The router (answer: relayed, forwarding to the PACS) and Orthanc as the PACS, neither
    started; the PACS knows the router as a modality (the AE it answers N-ACTION from),
    reporting to `report_to` (default: the router's port)."""
    pacs = Orthanc(tmp_path / "pacs", aet="PACS")
    rules = RULES % {"commit": modality.port, "pacs": pacs.dicom_port, "timeout": "4h"}
    rules = rules.replace("  - forward: pacs\n", f"  - forward: {forward}\n")
    daemon = RouterDaemon(tmp_path / "router", rules + extra)
    pacs.overrides["DicomModalities"] = {
        "router": {"AET": "DICOM_ROUTER", "Host": LOOPBACK, "Port": report_to or daemon.port}
    }
    if lua:
        script = tmp_path / "pacs.lua"
        script.write_text(lua)
        pacs.overrides["LuaScripts"] = [str(script)]
    return daemon, pacs


def request(
    daemon: RouterDaemon, modality: CommitmentModality, tmp_path: Path, count: int
) -> tuple[str, list[tuple[str, str]]]:
    """A study of `count` CTs sent through the router, its commitment asked: (UID, refs)."""
    refs = study(tmp_path, count)
    send(daemon, tmp_path)
    uid = generate_uid()
    assert modality.request(daemon.port, uid, refs).Status == 0x0000
    return uid, refs


def test_relayed_study_committed_only_after_the_pacs_reports(
    tmp_path: Path, modality: CommitmentModality
) -> None:
    """Type 1 to the modality after Orthanc's own report, which came on a new association;
    the relay is counted."""
    metrics_port = free_port()
    daemon, pacs = peers(tmp_path, modality, extra=f"metrics: {{port: {metrics_port}}}\n")
    with pacs:
        daemon.start()
        try:
            uid, refs = request(daemon, modality, tmp_path, 3)
            event_type, report = modality.wait_report()
            assert_all_committed(event_type, report, refs)
            assert pacs.count() == 3
            daemon.wait_log(f"storage commitment {uid} for MODALITY@127.0.0.1 reported")
            log = daemon.log()
            relayed = log.index(": pacs reported on a new association event type 1, 3 committed")
            assert relayed < log.index(f"storage commitment {uid} for MODALITY@127.0.0.1 reported")
            wait_value(
                metrics_port, "dicom_router_commitment_relays_total", lambda v: v == 1,
                outcome="committed",
            )  # fmt: skip
        finally:
            daemon.stop()


def test_sync_forward_to_the_pacs_is_relayed_too(
    tmp_path: Path, modality: CommitmentModality
) -> None:
    """Forwarded with mode: sync (no queued delivery): the PACS is still asked, then type 1."""
    daemon, pacs = peers(tmp_path, modality, forward="{to: pacs, mode: sync}")
    with pacs:
        daemon.start()
        try:
            _, refs = request(daemon, modality, tmp_path, 2)
            event_type, report = modality.wait_report()
            daemon.wait_log(": pacs reported on a new association event type 1, 2 committed")
        finally:
            daemon.stop()
    assert_all_committed(event_type, report, refs)


def test_no_report_until_the_pacs_is_back(tmp_path: Path, modality: CommitmentModality) -> None:
    """PACS down: nothing delivered, nothing asked, no report; once it is up, type 1."""
    daemon, pacs = peers(tmp_path, modality)
    daemon.start()
    try:
        _, refs = request(daemon, modality, tmp_path, 2)
        time.sleep(3)  # several ticks with the PACS down
        assert modality.reports == []
        with pacs:
            event_type, report = modality.wait_report()
        assert_all_committed(event_type, report, refs)
    finally:
        daemon.stop()


# Orthanc accepts the instance (0x0000), then deletes it: asked for it, it says 0x0112.
FORGETFUL = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['SOPInstanceUID'] == '%s' then
    RestApiDelete('/instances/' .. instanceId)
  end
end
"""


def test_instance_the_pacs_no_longer_has_failed_with_its_reason(
    tmp_path: Path, modality: CommitmentModality
) -> None:
    """Delivered, then lost by the PACS: type 2, that instance failed with the PACS's own
    Failure Reason (0x0112), the others committed."""
    refs = study(tmp_path, 2)
    daemon, pacs = peers(tmp_path, modality, lua=FORGETFUL % refs[1][1])
    with pacs:
        daemon.start()
        try:
            send(daemon, tmp_path)
            assert modality.request(daemon.port, generate_uid(), refs).Status == 0x0000
            event_type, report = modality.wait_report()
        finally:
            daemon.stop()
    assert event_type == 2
    assert [r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence] == [refs[0][1]]
    failed = [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in report.FailedSOPSequence]
    assert failed == [(refs[1][1], 0x0112)]


def test_relay_pending_at_kill9_is_asked_again_and_answered_after_restart(
    tmp_path: Path, modality: CommitmentModality
) -> None:
    """The PACS's report cannot reach the router (wrong port in its config) when the daemon
    is killed -9; restarted with the PACS fixed, the relay is asked again: type 1."""
    daemon, pacs = peers(tmp_path, modality, report_to=free_port())  # its report goes nowhere
    with pacs:
        daemon.start()
        try:
            uid, refs = request(daemon, modality, tmp_path, 2)
            daemon.wait_log(": pacs asked for 2 instances")
            daemon.kill9()
            assert modality.reports == []
            pacs.stop()
            pacs.overrides["DicomModalities"]["router"]["Port"] = daemon.port
            pacs.start()
            daemon.start()
            event_type, report = modality.wait_report()
            assert_all_committed(event_type, report, refs)
            assert report.TransactionUID == uid
            assert "relays without a report asked again" in daemon.log()
        finally:
            daemon.stop()


def n_event_report(router_port: int, calling: str, uid: str, event_type: int = 1) -> int:
    """One N-EVENT-REPORT to the router from `calling` proposing the SCP role: its status."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    assoc = ae.associate(LOOPBACK, router_port, ae_title="DICOM_ROUTER", ext_neg=[role])
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.TransactionUID = uid
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = generate_uid()
        ds.ReferencedSOPSequence = [item]
        rsp, _ = assoc.send_n_event_report(
            ds, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        return int(rsp.Status)
    finally:
        assoc.release()


@pytest.fixture
def idle_router(tmp_path: Path, modality: CommitmentModality) -> Iterator[RouterDaemon]:
    """The router with answer: relayed and a PACS that is not running."""
    daemon, _ = peers(tmp_path, modality)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_report_from_a_peer_that_is_no_commitment_destination_refused(
    idle_router: RouterDaemon,
) -> None:
    """A modality (a caller, not a destination) sending an N-EVENT-REPORT: 0x0211, logged."""
    assert n_event_report(idle_router.port, "MODALITY", generate_uid()) == 0x0211
    idle_router.wait_log("status=0x0211 (not a commitment destination)")


def test_report_of_an_unknown_transaction_refused(idle_router: RouterDaemon) -> None:
    """The PACS (not in callers: admitted as a commitment destination) reporting a
    Transaction UID the router never sent: 0x0115; another Event Type: 0x0113."""
    assert n_event_report(idle_router.port, "PACS", generate_uid()) == 0x0115
    assert n_event_report(idle_router.port, "PACS", generate_uid(), event_type=3) == 0x0113
    idle_router.wait_log("status=0x0115 (unknown Transaction UID)")
    assert "Traceback" not in idle_router.log()


def test_open_relays_bounded(tmp_path: Path) -> None:
    """MAX_OPEN_RELAYS open: one more is refused whole (OverflowError, nothing recorded);
    once one is answered, it fits."""
    spool = Spool(tmp_path)
    item = [Item(CTImageStorage, "1.2.3")]
    now = time.time()
    for uid in [*(f"t{i}" for i in range(MAX_OPEN_RELAYS)), "late"]:
        txn = Transaction(uid, "CT_1", "ROUTER", "127.0.0.1", now, now + 60, "", None, 0, now, None)
        spool.commitments.record(txn, item, max_open=MAX_OPEN_RELAYS + 1)
    for i in range(MAX_OPEN_RELAYS):
        spool.relays.open(f"t{i}", [(f"r{i}", "pacs", item)], MAX_OPEN_RELAYS)
    with pytest.raises(OverflowError):
        spool.relays.open("late", [("r-late", "pacs", item)], MAX_OPEN_RELAYS)
    assert spool.relays.of_transaction("late") == []
    assert spool.relays.answer("r0", 1, {"1.2.3": None})
    spool.relays.open("late", [("r-late", "pacs", item)], MAX_OPEN_RELAYS)
    assert spool.relays.open_count() == MAX_OPEN_RELAYS
    spool.close()


def test_trace_and_commitments_show_the_relay(tmp_path: Path, modality: CommitmentModality) -> None:
    """`trace` shows what the PACS said of the instance, `commitments` the relay's state."""
    daemon, pacs = peers(tmp_path, modality)
    with pacs:
        daemon.start()
        try:
            uid, refs = request(daemon, modality, tmp_path, 1)
            modality.wait_report()
            daemon.wait_log(f"storage commitment {uid} for MODALITY@127.0.0.1 reported")
            traced = cli(daemon, "trace", refs[0][1]).stdout
            listed = cli(daemon, "commitments").stdout
        finally:
            daemon.stop()
    assert f"{refs[0][1]} committed, report reported; pacs committed" in traced
    assert "  relay pacs: answered, 1 asked, 0 failed" in listed


def test_commitment_destination_not_in_callers_cannot_store(
    tmp_path: Path, idle_router: RouterDaemon
) -> None:
    """The PACS's AE title is admitted for its reports only: its C-STORE gets 0x0124."""
    study(tmp_path, 1)
    result = storescu(idle_router.port, [tmp_path / "study"], calling="PACS")
    assert result.statuses == [0x0124]
    idle_router.wait_log("C-STORE from PACS@127.0.0.1 refused (0x0124)")
