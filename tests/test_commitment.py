"""Storage Commitment: a modality is told "committed" only for what reached its destinations."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from router.receive.commitment import MAX_ITEMS, MAX_OPEN_PER_CALLER
from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance
from tests.peers import (
    LOOPBACK,
    AssociationFailed,
    CommitmentModality,
    Orthanc,
    ScriptedSCP,
    StoreSCP,
    free_port,
    storescu,
)
from tests.prom import scrape, value, wait_value
from tests.test_studies import cli

M = "dicom_router_"
RULES = """\
version: 1
listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}
spool: spool
spool_min_free: 1MiB
callers:
  - {ae_title: MODALITY, commitment_port: %(commit)d}
  - {ae_title: STORESCU}
  - {ae_title: NOCOMMIT}
storage_commitment: {answer: delivered, timeout: %(timeout)s}
destinations:
  pacs:
    ae_title: STORESCP
    host: 127.0.0.1
    port: %(pacs)d
    retry: {initial_delay: 0.2s, max_delay: 0.5s}
rules:
  - {name: drop-mr, match: {sop_class: MRImageStorage}, actions: [discard]}
default:
  - forward: pacs
"""


def start_router(
    tmp_path: Path,
    modality: CommitmentModality,
    pacs: StoreSCP | ScriptedSCP,
    timeout: str = "4h",
    extra: str = "",
) -> RouterDaemon:
    """The router forwarding everything to `pacs`, answering storage commitment."""
    rules = RULES % {"commit": modality.port, "timeout": timeout, "pacs": pacs.port}
    return RouterDaemon(tmp_path / "router", rules + extra).start()


def study(tmp_path: Path, count: int = 3) -> list[tuple[str, str]]:
    """`count` CT instances of one study on disk; their (SOP Class, SOP Instance) UIDs."""
    folder = tmp_path / "study"
    folder.mkdir(exist_ok=True)
    study_uid = generate_uid()
    return [
        (CTImageStorage, str(make_instance(folder / f"{i}.dcm", study_uid=study_uid)))
        for i in range(count)
    ]


def send(daemon: RouterDaemon, tmp_path: Path) -> None:
    """Send the study folder to the router; every instance answered 0x0000."""
    result = storescu(daemon.port, [tmp_path / "study"], calling="STORESCU")
    assert result.returncode == 0, result.output


def requested(
    daemon: RouterDaemon, modality: CommitmentModality, tmp_path: Path, count: int, uid: str = ""
) -> list[tuple[str, str]]:
    """A study of `count` instances sent, then its commitment asked (answered 0x0000)."""
    refs = study(tmp_path, count)
    send(daemon, tmp_path)
    assert modality.request(daemon.port, uid or generate_uid(), refs).Status == 0x0000
    return refs


@pytest.fixture
def pacs_down(tmp_path: Path) -> Iterator[StoreSCP]:
    """A storescp not started (the PACS is down); stopped after if a test started it."""
    pacs = StoreSCP(tmp_path / "pacs")
    try:
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture
def routed(
    tmp_path: Path, modality: CommitmentModality, store_scp: StoreSCP
) -> Iterator[RouterDaemon]:
    """The router with its PACS (storescp) up."""
    daemon = start_router(tmp_path, modality, store_scp)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_study_committed_after_delivery(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality, store_scp: StoreSCP
) -> None:
    """A study forwarded to the PACS: N-ACTION 0x0000, then a type 1 report listing all."""
    refs = requested(routed, modality, tmp_path, 3)
    event_type, report = modality.wait_report()
    assert store_scp.count() == 3
    assert_all_committed(event_type, report, refs)
    assert "FailedSOPSequence" not in report


def test_report_on_the_request_association_while_it_is_open(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """A modality that keeps its association open gets the report on it, none on a new one."""
    refs = study(tmp_path, 2)
    send(routed, tmp_path)
    uid = generate_uid()
    assert modality.request(routed.port, uid, refs, keep_open=30).Status == 0x0000
    assert len(modality.same_association) == 1
    event_type, report = modality.same_association[0]
    assert (event_type, report.TransactionUID) == (1, uid)
    routed.wait_log(f"storage commitment {uid} for MODALITY@127.0.0.1 reported on its request's")
    time.sleep(4)  # past the lease: the forwarder must not report it again
    assert modality.reports == []


def test_report_retried_until_the_modality_listens(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """The modality's commitment_port closed when the report is due: retried, then delivered."""
    modality.close()
    uid = generate_uid()
    requested(routed, modality, tmp_path, 1, uid)
    routed.wait_log(f"storage commitment {uid} for MODALITY@127.0.0.1: report not delivered")
    back = CommitmentModality(port=modality.port)
    try:
        event_type, report = back.wait_report(timeout=60)
        assert (event_type, report.TransactionUID) == (1, uid)
    finally:
        back.close()


def test_no_report_until_the_destination_is_back(
    tmp_path: Path, modality: CommitmentModality, pacs_down: StoreSCP
) -> None:
    """PACS down: the request is accepted but not reported; once the PACS is up, type 1."""
    pacs = pacs_down  # started by the test once the request is pending
    daemon = start_router(tmp_path, modality, pacs)
    try:
        refs = requested(daemon, modality, tmp_path, 2)
        time.sleep(3)  # several commitment ticks with the deliveries still pending
        assert modality.reports == []
        with pacs:
            event_type, report = modality.wait_report()
            assert pacs.count() == 2
        assert_all_committed(event_type, report, refs)
    finally:
        daemon.stop()


def test_metrics_show_pending_commitments_then_the_outcome(
    tmp_path: Path, modality: CommitmentModality, pacs_down: StoreSCP
) -> None:
    """/metrics: one transaction pending with its age while the PACS is down, then committed."""
    port = free_port()
    daemon = start_router(tmp_path, modality, pacs_down, extra=f"metrics: {{port: {port}}}\n")
    try:
        requested(daemon, modality, tmp_path, 1)
        wait_value(port, M + "commitments_oldest_seconds", lambda v: v >= 1)
        assert value(scrape(port), M + "commitments_pending") == 1
        with pacs_down:
            modality.wait_report()
            wait_value(port, M + "commitments_pending", lambda v: v == 0)
        assert value(scrape(port), M + "commitments_total", outcome="committed") == 1
    finally:
        daemon.stop()


def test_undelivered_at_timeout_reported_failed(
    tmp_path: Path, modality: CommitmentModality, pacs_down: StoreSCP
) -> None:
    """PACS down past the timeout: type 2, each instance failed 0x0110 (Processing failure)."""
    pacs = pacs_down  # started by the test once the request is pending
    daemon = start_router(tmp_path, modality, pacs, timeout="2s")
    try:
        refs = requested(daemon, modality, tmp_path, 2)
        event_type, report = modality.wait_report()
        assert event_type == 2
        failed = [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in report.FailedSOPSequence]
        assert failed == [(sop, 0x0110) for _, sop in refs]
    finally:
        daemon.stop()


def test_unknown_instance_failed_no_such_object(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """An instance never sent: type 2, it alone failed with 0x0112, the sent one committed."""
    refs = study(tmp_path, 1)
    send(routed, tmp_path)
    unknown = (CTImageStorage, generate_uid())
    assert modality.request(routed.port, generate_uid(), [*refs, unknown]).Status == 0x0000
    event_type, report = modality.wait_report()
    assert event_type == 2
    assert [r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence] == [refs[0][1]]
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in report.FailedSOPSequence] == [
        (unknown[1], 0x0112)
    ]


def test_other_sop_class_failed_class_instance_conflict(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """An instance referenced with another SOP Class than it was sent with: failed 0x0119."""
    refs = study(tmp_path, 1)
    send(routed, tmp_path)
    assert modality.request(routed.port, generate_uid(), [(MRImageStorage, refs[0][1])]).Status == 0
    event_type, report = modality.wait_report()
    assert event_type == 2
    assert report.FailedSOPSequence[0].FailureReason == 0x0119


def test_dead_lettered_instance_failed_processing_failure(
    tmp_path: Path, modality: CommitmentModality, scripted: Callable[..., ScriptedSCP]
) -> None:
    """The PACS refuses the instance (0x0124, permanent: a dead letter): failed 0x0110."""
    daemon = start_router(tmp_path, modality, scripted(status=0x0124))
    try:
        refs = requested(daemon, modality, tmp_path, 1)
        event_type, report = modality.wait_report()
        assert event_type == 2
        failed = [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in report.FailedSOPSequence]
        assert failed == [(refs[0][1], 0x0110)]
    finally:
        daemon.stop()


def test_discarded_instance_failed_processing_failure(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """An instance a rule discarded (answered 0x0000, kept nowhere): failed 0x0110."""
    sop = str(make_instance(tmp_path / "mr.dcm", MRImageStorage))
    assert storescu(routed.port, [tmp_path / "mr.dcm"], calling="STORESCU").returncode == 0
    assert modality.request(routed.port, generate_uid(), [(MRImageStorage, sop)]).Status == 0
    event_type, report = modality.wait_report()
    assert event_type == 2
    assert report.FailedSOPSequence[0].FailureReason == 0x0110


def test_duplicate_transaction_uid_refused(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """A Transaction UID already recorded: the second N-ACTION gets 0x0115, one log line."""
    uid = generate_uid()
    refs = [(CTImageStorage, generate_uid())]
    assert modality.request(routed.port, uid, refs).Status == 0x0000
    assert modality.request(routed.port, uid, refs).Status == 0x0115
    routed.wait_log("status=0x0115 (duplicate Transaction UID)")
    assert "Traceback" not in routed.log()


def test_missing_referenced_sop_sequence_refused(
    routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """An N-ACTION without Referenced SOP Sequence items: 0x0120 (Missing attribute)."""
    assert modality.request(routed.port, generate_uid(), []).Status == 0x0120


def test_too_many_items_refused(routed: RouterDaemon, modality: CommitmentModality) -> None:
    """One item more than MAX_ITEMS: 0x0213 (Resource limitation), and the router serves on."""
    refs = [(CTImageStorage, generate_uid()) for _ in range(MAX_ITEMS + 1)]
    assert modality.request(routed.port, generate_uid(), refs).Status == 0x0213
    assert modality.request(routed.port, generate_uid(), refs[:1]).Status == 0x0000


def test_request_past_the_dataset_bound_aborted(
    routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """An N-ACTION dataset over 1 MiB (12,000 items): no response (aborted), serves on."""
    refs = [(CTImageStorage, generate_uid()) for _ in range(12000)]
    assert "Status" not in modality.request(routed.port, generate_uid(), refs)
    assert modality.request(routed.port, generate_uid(), refs[:1]).Status == 0x0000
    assert "Traceback" not in routed.log()


def test_open_transactions_per_caller_bounded(
    tmp_path: Path, modality: CommitmentModality, pacs_down: StoreSCP
) -> None:
    """MAX_OPEN_PER_CALLER transactions still open: the next one gets 0x0213."""
    daemon = start_router(tmp_path, modality, pacs_down)  # every transaction stays open
    try:
        refs = study(tmp_path, 1)
        send(daemon, tmp_path)
        for _ in range(MAX_OPEN_PER_CALLER):
            assert modality.request(daemon.port, generate_uid(), refs).Status == 0x0000
        assert modality.request(daemon.port, generate_uid(), refs).Status == 0x0213
        daemon.wait_log("transactions of this caller still open")
    finally:
        daemon.stop()


def test_caller_without_commitment_port_has_context_rejected(routed: RouterDaemon) -> None:
    """A caller with no commitment_port: the Storage Commitment context is rejected, logged."""
    other = CommitmentModality("NOCOMMIT")
    try:
        with pytest.raises(AssociationFailed, match="context rejected"):
            other.request(routed.port, generate_uid(), [(CTImageStorage, generate_uid())])
    finally:
        other.close()
    routed.wait_log("storage commitment from NOCOMMIT@127.0.0.1 refused (context rejected)")


def test_pending_transaction_answered_after_kill9(
    tmp_path: Path, modality: CommitmentModality, pacs_down: StoreSCP
) -> None:
    """kill -9 between the N-ACTION and the report: the restarted daemon still reports."""
    pacs = pacs_down  # started by the test once the request is pending
    daemon = start_router(tmp_path, modality, pacs)
    try:
        refs = requested(daemon, modality, tmp_path, 2)
        daemon.kill9()
        assert modality.reports == []
        with pacs:
            daemon.start()
            event_type, report = modality.wait_report()
        assert_all_committed(event_type, report, refs)
    finally:
        daemon.stop()


def test_trace_and_commitments_show_the_transaction(
    tmp_path: Path, routed: RouterDaemon, modality: CommitmentModality
) -> None:
    """`trace` shows each instance's commitment, `commitments` the transaction, once reported."""
    uid = generate_uid()
    refs = requested(routed, modality, tmp_path, 1, uid)
    modality.wait_report()
    routed.wait_log(f"storage commitment {uid} for MODALITY@127.0.0.1 reported")
    traced = cli(routed, "trace", refs[0][1]).stdout
    assert f"commitment {uid} asked by MODALITY@127.0.0.1" in traced
    assert f"{refs[0][1]} committed, report reported" in traced
    listed = cli(routed, "commitments").stdout
    assert uid in listed and listed.rstrip().endswith("reported")


def test_check_lists_the_callers_that_may_commit(
    tmp_path: Path, modality: CommitmentModality
) -> None:
    """`check` shows which callers may ask for commitment, and their report port."""
    daemon = RouterDaemon(tmp_path / "router", RULES % {"commit": 1104, "timeout": "4h", "pacs": 1})
    shown = cli(daemon, "check").stdout
    assert "MODALITY from any address, storage commitment reports to port 1104" in shown
    assert "NOCOMMIT from any address\n" in shown


def test_orthanc_modality_sees_its_study_committed(tmp_path: Path, store_scp: StoreSCP) -> None:
    """Orthanc as the modality: it stores through the router, asks for commitment, gets Success."""
    orthanc = Orthanc(tmp_path / "orthanc", aet="MODALITY")
    daemon = RouterDaemon(
        tmp_path / "router",
        RULES % {"commit": orthanc.dicom_port, "timeout": "4h", "pacs": store_scp.port},
    )
    orthanc.overrides["DicomModalities"] = {
        "router": {"AET": "DICOM_ROUTER", "Host": LOOPBACK, "Port": daemon.port}
    }
    orthanc.start()
    daemon.start()
    try:
        refs = study(tmp_path, 2)
        ids = [_post(f"{orthanc.url}/instances", p.read_bytes())["ID"]
               for p in sorted((tmp_path / "study").glob("*.dcm"))]  # fmt: skip
        job = _post(
            f"{orthanc.url}/modalities/router/store",
            json.dumps({"Resources": ids, "StorageCommitment": True, "Synchronous": True}).encode(),
        )
        assert store_scp.wait_count(2) == 2
        uid = job["StorageCommitmentTransactionUID"]
        deadline = time.monotonic() + 30
        while (state := _get(f"{orthanc.url}/storage-commitment/{uid}"))["Status"] == "Pending":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["Status"] == "Success", state
        assert sorted(s["SOPInstanceUID"] for s in state["Success"]) == sorted(s for _, s in refs)
    finally:
        daemon.stop()
        orthanc.stop()


def _post(url: str, body: bytes) -> dict[str, str]:
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as rsp:
        return dict(json.loads(rsp.read()))


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as rsp:
        return dict(json.loads(rsp.read()))


def assert_all_committed(event_type: int, report: Dataset, refs: list[tuple[str, str]]) -> None:
    """Event Type 1, and every requested instance in the report's Referenced SOP Sequence."""
    assert event_type == 1
    assert [r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence] == [
        sop for _, sop in refs
    ]
