"""`deidentify` through the real daemon: the PACS gets the original, research a keyed,
consistent de-identified copy (storescu -> dicom-router -> two storescp)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance
from tests.peers import StoreSCP, free_port
from tests.prom import wait_value
from tests.test_forward import cli, dest, queue_list, send

pytestmark = pytest.mark.interop

Router = Callable[..., RouterDaemon]
PHI = ("Secret^Patient", "MRN-4711", "19700101", "ACC-99", "Dr^Who")


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[StoreSCP, StoreSCP]]:
    """Two storescp: the PACS and the research archive."""
    with (
        StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs,
        StoreSCP(tmp_path / "research", ae_title="RESEARCH") as research,
    ):
        yield pacs, research


def _key(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def _rules(pacs: StoreSCP, research: StoreSCP, key: Path, metrics: int | None = None) -> str:
    return f"""\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}, workers: 2}}
spool: spool
{f"metrics: {{port: {metrics}}}" if metrics else ""}
spool_min_free: 1MiB
deidentify:
  research:
    options: [retain_longitudinal_modified_dates]
    key_file: {key}
destinations:
  pacs: {dest("PACS", pacs.port)}
  research: {dest("RESEARCH", research.port)}
rules: []
default:
  - forward: pacs
  - deidentify: research
  - forward: research
"""


def _instance(path: Path, study: str, **kw: object) -> Path:
    make_instance(
        path,
        study_uid=study,
        pixel_bytes=2048,
        PatientName="Secret^Patient",
        PatientID="MRN-4711",
        PatientBirthDate="19700101",
        AccessionNumber="ACC-99",
        ReferringPhysicianName="Dr^Who",
        **kw,
    )
    return path


def _by_original(scp: StoreSCP, original: list[Path]) -> list[Path]:
    """The files `scp` got, in the order of `original` (matched by InstanceNumber)."""
    got = {int(dcmread(f, stop_before_pixels=True).InstanceNumber): f for f in scp.files()}
    return [got[int(dcmread(p, stop_before_pixels=True).InstanceNumber)] for p in original]


def test_pacs_gets_the_original_and_research_a_deidentified_copy(
    router: Router, peers: tuple[StoreSCP, StoreSCP], tmp_path: Path
) -> None:
    """Two associations of one study: PACS byte-identical datasets, research no PHI,
    the markers, one new StudyInstanceUID and the pixels unchanged."""
    pacs, research = peers
    key = _key(tmp_path / "deid.key", os.urandom(32))
    d = router(_rules(pacs, research, key))
    study = generate_uid()
    files = [_instance(tmp_path / f"{i}.dcm", study, InstanceNumber=i) for i in (1, 2)]
    for f in files:  # two associations
        assert send(d, [f]) == [0x0000]
    pacs.wait_count(2)
    research.wait_count(2)
    for original, got in zip(files, _by_original(pacs, files), strict=True):
        a, b = dcmread(original), dcmread(got)
        assert a == b  # every element of the dataset, as sent
    copies = [dcmread(f) for f in _by_original(research, files)]
    for copy, original in zip(copies, files, strict=True):
        dump = subprocess.run(["dcmdump", str(copy.filename)], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert not [p for p in PHI if p in dump]
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert copy.LongitudinalTemporalInformationModified == "MODIFIED"
        assert copy.PixelData == dcmread(original).PixelData
        assert copy.StudyInstanceUID.startswith("2.25.") and copy.StudyInstanceUID != study
    assert copies[0].StudyInstanceUID == copies[1].StudyInstanceUID


def _research_study(router: Router, tmp_path: Path, key: Path, name: str) -> str:
    """The StudyInstanceUID research gets from a fresh daemon for one fixed instance."""
    with (
        StoreSCP(tmp_path / f"{name}-pacs") as pacs,
        StoreSCP(tmp_path / f"{name}-res") as research,
    ):
        d = router(_rules(pacs, research, key))
        source = _instance(tmp_path / f"{name}.dcm", "1.2.3.4.5.6", InstanceNumber=1)
        assert send(d, [source]) == [0x0000]
        research.wait_count(1)
        d.stop()
        return str(dcmread(research.files()[0]).StudyInstanceUID)


def test_the_same_key_in_another_daemon_gives_the_same_uids_another_key_others(
    router: Router, tmp_path: Path
) -> None:
    """Two daemon processes with copies of one key agree; a third with another key does not."""
    secret = os.urandom(32)
    first = _research_study(router, tmp_path, _key(tmp_path / "a.key", secret), "a")
    second = _research_study(router, tmp_path, _key(tmp_path / "b.key", secret), "b")
    other = _research_study(router, tmp_path, _key(tmp_path / "c.key", os.urandom(32)), "c")
    assert first == second != other


def test_uids_stay_the_same_across_a_restart_with_the_same_key(
    router: Router, peers: tuple[StoreSCP, StoreSCP], tmp_path: Path
) -> None:
    """One daemon, stopped and started again with its key: the study keeps its new UID."""
    pacs, research = peers
    d = router(_rules(pacs, research, _key(tmp_path / "deid.key", os.urandom(32))))
    study = generate_uid()
    files = [_instance(tmp_path / f"{i}.dcm", study, InstanceNumber=i) for i in (1, 2)]
    assert send(d, [files[0]]) == [0x0000]
    research.wait_count(1)
    d.stop()
    d.start()
    assert send(d, [files[1]]) == [0x0000]
    research.wait_count(2)
    first, second = (dcmread(f, stop_before_pixels=True) for f in _by_original(research, files))
    assert first.StudyInstanceUID == second.StudyInstanceUID != study
    assert first.PatientID == second.PatientID != "MRN-4711"


def test_a_burned_in_image_reaches_the_pacs_and_is_withheld_from_research(
    router: Router, peers: tuple[StoreSCP, StoreSCP], tmp_path: Path
) -> None:
    """burned_in: refuse: PACS gets it; research not; trace, one log line, the metric; no
    dead letter."""
    pacs, research = peers
    metrics = free_port()
    d = router(_rules(pacs, research, _key(tmp_path / "deid.key", os.urandom(32)), metrics))
    source = _instance(tmp_path / "burned.dcm", generate_uid(), BurnedInAnnotation="YES")
    uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    assert send(d, [source]) == [0x0000]
    pacs.wait_count(1)
    name = "dicom_router_deidentify_withheld_total"
    assert wait_value(metrics, name, lambda v: v == 1, profile="research") == 1
    d.wait_log("withheld: it has or may have burned-in annotation")
    assert d.log().count("withheld: it has or may have burned-in annotation") == 1
    assert "Traceback" not in d.log()
    assert "withheld by deidentify research" in cli(d, "trace", str(d.config_path), uid)
    rows, summary = queue_list(d)
    assert not [r for r in rows if r.state == "dead"]
    assert summary.get("research", (0, 0)) == (0, 0)
    assert research.files() == []
