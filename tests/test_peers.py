"""Self-tests of the test infrastructure (generators, DCMTK/Orthanc peers, SCUs), no router."""

from __future__ import annotations

import hashlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt

from tests.dicomgen import make_ct, make_instance, make_multiframe, make_series
from tests.peers import (
    Orthanc,
    Proc,
    StoreSCP,
    _alive,
    _descendants,
    echoscu,
    free_port,
    pyn_rejected,
    pyn_store,
    storescu,
    wait_port,
)
from tests.seed import SEED_SOP_CLASSES

MiB = 1024 * 1024


def _sha256_tail(path: Path, nbytes: int) -> str:
    """Hash the last nbytes of a file in 4 MiB pieces (the Pixel Data value, which is last)."""
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        fp.seek(-nbytes, 2)
        while chunk := fp.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _by_sop_uid(paths: list[Path]) -> dict[str, Path]:
    """Map SOP Instance UID -> file, reading headers only."""
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


# --------------------------------------------------------------------------- dicomgen / seed


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_make_ct_writes_readable_part10_image(tmp_path: Path, transfer_syntax: str) -> None:
    """make_ct gives a Part-10 file with complete meta and a 512x512 16-bit image."""
    path = tmp_path / "ct.dcm"
    uid = make_ct(path, transfer_syntax=transfer_syntax, PatientID="P42")
    ds = dcmread(path)
    assert ds.preamble == b"\0" * 128
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == uid == ds.SOPInstanceUID
    assert (ds.PatientID, ds.Modality, ds.Rows, ds.Columns) == ("P42", "CT", 512, 512)
    assert ds.pixel_array.shape == (512, 512)
    assert int(ds.pixel_array.max()) < 2**ds.BitsStored


def test_make_instance_without_pixels_for_any_sop_class(tmp_path: Path) -> None:
    """make_instance accepts any SOP class UID and extra keywords, and adds no pixels."""
    path = tmp_path / "sr.dcm"
    make_instance(path, "1.2.840.10008.5.1.4.1.1.88.11", AccessionNumber="A7", Manufacturer="X")
    ds = dcmread(path)
    assert (ds.Modality, ds.AccessionNumber, ds.Manufacturer) == ("SR", "A7", "X")
    assert "PixelData" not in ds


def test_make_instance_rejects_unknown_keyword(tmp_path: Path) -> None:
    """A misspelt keyword raises instead of silently producing a different file."""
    with pytest.raises(TypeError, match="PatientNmae"):
        make_instance(tmp_path / "x.dcm", PatientNmae="typo")


def test_make_series_shares_study_and_series(tmp_path: Path) -> None:
    """make_series writes n CT files of one study/series with distinct instance UIDs."""
    paths = make_series(tmp_path, 4, size=64 * 1024)
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({h.StudyInstanceUID for h in headers}) == 1
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == 4
    assert [h.InstanceNumber for h in headers] == [1, 2, 3, 4]


def test_seed_table_has_130_distinct_sop_classes() -> None:
    """The seed parser finds all 130 rows with distinct UIDs and a name each."""
    assert len(SEED_SOP_CLASSES) == 130
    assert len({uid for uid, _ in SEED_SOP_CLASSES}) == 130
    assert ("1.2.840.10008.5.1.4.1.1.2", "CTImageStorage") in SEED_SOP_CLASSES


# --------------------------------------------------------------------------- process helpers


def test_proc_stop_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    """Proc.stop escalates to SIGKILL and also kills descendants, by PID."""
    proc = Proc(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"], tmp_path / "p.log")
    deadline = time.monotonic() + 5
    while len(_descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    children = _descendants(proc.pid)
    assert len(children) == 2
    proc.stop(timeout=0.5)
    assert proc.returncode == -9
    assert not any(_alive(pid, start) for pid, start in children)


def test_wait_port_reports_a_dead_process(tmp_path: Path) -> None:
    """wait_port fails at once, with the log, when the server process died."""
    proc = Proc(["sh", "-c", "echo boom; exit 3"], tmp_path / "p.log")
    with pytest.raises(RuntimeError, match="boom"):
        wait_port(free_port(), 10, proc=proc)
    proc.stop()


# --------------------------------------------------------------------------- DCMTK peers


def test_echoscu_succeeds_against_storescp(store_scp: StoreSCP) -> None:
    """echoscu gets a C-ECHO success from storescp."""
    done = echoscu(store_scp.port, called="STORESCP")
    assert done.returncode == 0, done.stderr


def test_storescu_to_storescp_delivers_identical_datasets(
    tmp_path: Path, store_scp: StoreSCP
) -> None:
    """Every file gets 0x0000 and arrives with the same elements, in any native syntax."""
    sources = make_series(tmp_path / "src", 3)
    sources.append(tmp_path / "implicit.dcm")
    make_ct(sources[-1], transfer_syntax=ImplicitVRLittleEndian)
    result = storescu(store_scp.port, sources, called="STORESCP")
    assert result.statuses == [0] * 4, result.output
    assert result.ok
    store_scp.wait_count(4)
    received = _by_sop_uid(store_scp.files())
    for src in sources:
        original = dcmread(src)
        copy = dcmread(received[str(original.SOPInstanceUID)])
        assert copy == original  # element-wise, Pixel Data included
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert [f.sop_instance_uid for f in result.files] == [
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources
    ]


def test_storescu_parses_warning_and_failure_statuses(tmp_path: Path) -> None:
    """storescu's per-file statuses and error comments are parsed in order from its log."""
    answers = iter([0x0000, 0xB007, 0xA700])

    def handle_store(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = next(answers)
        if status.Status == 0xA700:
            status.ErrorComment = "disk full"
        return status

    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title="PYNSCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    assert server is not None
    try:
        paths = make_series(tmp_path, 3, size=16 * 1024)
        result = storescu(port, paths, called="PYNSCP")
    finally:
        server.shutdown()
        ae.shutdown()
    assert result.statuses == [0x0000, 0xB007, 0xA700], result.output
    assert [f.error_comment for f in result.files] == [None, None, "disk full"]
    assert not result.ok


def test_storescu_reports_association_rejection(tmp_path: Path) -> None:
    """A refused association shows up as StoreResult.rejected and no statuses."""
    with StoreSCP(tmp_path / "scp", extra=["--refuse"]) as scp:
        result = storescu(scp.port, [make_series(tmp_path, 1)[0]], called="STORESCP")
    assert result.rejected is not None, result.output
    assert "Rejected Permanent" in result.rejected
    assert result.statuses == []
    assert result.returncode != 0


@pytest.mark.slow
def test_every_seed_sop_class_is_sent_by_storescu_and_stored(
    tmp_path: Path, store_scp: StoreSCP
) -> None:
    """All 130 seed SOP classes (even the typo'd UID) go through storescu -> storescp."""
    paths: list[Path] = []
    for i, (uid, _name) in enumerate(SEED_SOP_CLASSES):
        paths.append(tmp_path / f"{i:03d}.dcm")
        make_instance(paths[-1], uid)
    # Two contexts per class and 128 per association: at most 64 classes per storescu run.
    statuses: list[int] = []
    for start in range(0, len(paths), 60):
        result = storescu(store_scp.port, paths[start : start + 60], called="STORESCP")
        statuses += result.statuses
        assert result.returncode == 0, result.output
    assert statuses == [0] * 130
    store_scp.wait_count(130)
    stored = {str(dcmread(p).SOPClassUID) for p in store_scp.files()}
    assert stored == {uid for uid, _ in SEED_SOP_CLASSES}


@pytest.mark.slow
def test_multiframe_300mb_streams_to_storescp_with_flat_memory(tmp_path: Path) -> None:
    """A 300 MB multi-frame file is generated and sent (pynetdicom, chunked) in little RAM."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    source = tmp_path / "mf.dcm"
    make_multiframe(source, 300 * 10**6)
    header = dcmread(source, stop_before_pixels=True)
    pixel_bytes = header.Rows * header.Columns * header.NumberOfFrames * 2
    assert abs(pixel_bytes - 300 * 10**6) < 512 * 1024
    with StoreSCP(tmp_path / "scp", max_pdu=131072) as scp:
        statuses = pyn_store(scp.port, [source], called="STORESCP")
        scp.wait_count(1)
        [received] = scp.files()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert statuses == [0]
    assert dcmread(received, stop_before_pixels=True) == header
    assert _sha256_tail(received, pixel_bytes) == _sha256_tail(source, pixel_bytes)
    # The whole file is 300 MB; streaming must keep our own growth far below that.
    assert peak - before < 64 * MiB, f"RSS grew by {(peak - before) / MiB:.0f} MiB"


# --------------------------------------------------------------------------- Orthanc


@pytest.fixture
def series(tmp_path: Path) -> Iterator[list[Path]]:
    """Five small CT files of one series."""
    yield make_series(tmp_path / "series", 5, size=128 * 1024)


def test_storescu_to_orthanc_is_counted_via_rest(orthanc: Orthanc, series: list[Path]) -> None:
    """storescu -> Orthanc: all succeed and REST lists exactly the sent instances."""
    result = storescu(orthanc.dicom_port, series, called=orthanc.aet)
    assert result.statuses == [0] * 5, result.output
    assert orthanc.wait_count(5) == 5
    assert sorted(orthanc.instances()) == sorted(_by_sop_uid(series))


def test_pyn_store_to_orthanc_returns_statuses(
    orthanc: Orthanc, series: list[Path], tmp_path: Path
) -> None:
    """pyn_store -> Orthanc: one status per file, files in two transfer syntaxes."""
    implicit = tmp_path / "implicit.dcm"
    uid = make_ct(implicit, transfer_syntax=ImplicitVRLittleEndian, PatientID="IMPL")
    assert pyn_store(orthanc.dicom_port, [*series, implicit], called=orthanc.aet) == [0] * 6
    assert orthanc.wait_count(6) == 6
    assert orthanc.tags(uid)["PatientID"] == "IMPL"


def test_pyn_store_raises_on_association_rejection(tmp_path: Path, series: list[Path]) -> None:
    """A rejected association raises AssociationRejected with the PS3.8 codes."""
    strict = Orthanc(tmp_path / "strict", config={"DicomCheckCalledAet": True})
    with strict:
        rj = pyn_rejected(strict.dicom_port, series[:1], called="NOT_ORTHANC")
        assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
