"""The de-identified bytes, pinned: one fixed instance under several option sets and syntaxes.

The instance has PHI at the top level and in nested sequences (defined and undefined
length), private elements, UIDs the table lists and does not list, binary and
multi-valued values, and elements after Pixel Data. Its output digests were computed
with the straightforward transform (every element decoded by pydicom, then re-encoded),
so any speed-up of `router.dicom.deid` that changes a single output byte fails here.

A deliberate change of the output (a fix of the profile) recomputes the pins with
`.venv/bin/python -m tests.test_deid_output`, which prints `_digest` of each case; say in
the commit why the bytes changed. The input's own digest is pinned too, so a failure
tells a changed input (e.g. another pydicom writing it) from a changed transform.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.actions.deidentify import apply
from router.dicom.deid import Profile
from tests.dicomgen import make_instance

LE, IMPLICIT, BE = ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian
KEY = b"k" * 32
BASIC: tuple[str, ...] = ()
LONGITUDINAL = (
    "retain_longitudinal_modified_dates",
    "retain_patient_characteristics",
    "retain_device_identity",
)
RETAIN = ("retain_uids", "retain_longitudinal_full_dates", "retain_institution_identity")
DESCRIPTORS = ("clean_descriptors",)
MIXED = (
    "clean_descriptors",
    "retain_longitudinal_modified_dates",
    "retain_device_identity",
    "retain_institution_identity",
)

# (transfer syntax, options) -> SHA-256 of the de-identified file
PINS: dict[tuple[str, tuple[str, ...]], str] = {
    (LE, BASIC): "8ed63d91008df0ca6b94af1f109a248d47be9ef0f1800a2db3b859213c367066",
    (LE, LONGITUDINAL): "6e44ff76ad7c29ed20e21b91f290a6dbe313d614bda3fb18071c2acb2c9ef0a5",
    (LE, RETAIN): "94dc654e042aef4e6dacdb173e0456e0ead3212ae6572ace0d7edd69de59f8b5",
    (LE, DESCRIPTORS): "e6a05794568702bba07ec19ca6d7d724d35112818f1bf766be35bc843034d231",
    (LE, MIXED): "db599287473b8ac59e80794c3866282cfa9ba6dfd2641d460e031cf08f2e9c3f",
    (IMPLICIT, LONGITUDINAL): "5d234c4f2d6993819ea87af25460f1e3727697c64881e76eeef423dd8eae1fff",
    (BE, BASIC): "144852092c497d6210580f2aa4bb8efd63d1bc7f150e21219db0a8165319ab98",
}
# transfer syntax -> SHA-256 of the input file
INPUTS: dict[str, str] = {
    LE: "f3f2968534644aeec8eee5c478011f4652b388aa962c180e5e20a53683f7308b",
    IMPLICIT: "715d6a041febaffd6ebefdcc1af5932f410290309eb002db0191caa4ab37c002",
    BE: "7f00859a09c6e9745f0922acf77636f4c13e8cd6efd5951974ac75286b71270b",
}


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _input(path: Path, syntax: str) -> None:
    """The fixed instance: every value, UID and date given, nothing from the clock."""
    make_instance(
        path,
        sop_instance_uid="1.2.826.0.1.3680043.10.1000.1.1",
        study_uid="1.2.826.0.1.3680043.10.1000.2",
        series_uid="1.2.826.0.1.3680043.10.1000.3",
        transfer_syntax=syntax,
        pixel_bytes=2048,
        StudyDate="20240229",
        SeriesDate="20240229",
        ContentDate="20240301",
        StudyTime="101500",
        SeriesTime="101600",
        ContentTime="101700.123",
        AcquisitionDateTime="20240229101800+0100",
        PatientName="Secret^Patient^Anna",
        PatientID="MRN-4711",
        IssuerOfPatientID="HOSP",
        PatientBirthDate="19700101",
        PatientSex="F",
        PatientAge="054Y",
        PatientWeight="70.5",
        AccessionNumber="ACC-99",
        ReferringPhysicianName="Who^Doctor",
        InstitutionName="General Hospital",
        InstitutionAddress="1 Main Street",
        StationName="CT01",
        DeviceSerialNumber="SN-123",
        DeviceUID="1.2.826.0.1.3680043.10.1000.9",
        ManufacturerDeviceClassUID="1.2.826.0.1.3680043.10.1000.8",
        StudyDescription="CT of Secret Patient MRN-4711",
        ImageComments="Anna moved",
        OperatorsName="Op^One",
        PerformedStationAETitle="CTSCANNER1",
        ClinicalTrialProtocolID="TRIAL-7",
        VerifyingObserverName="Obs^Erver",
        TimezoneOffsetFromUTC="+0100",
        StudyID="S1",
        SliceThickness="1.25",
        MakerNote=b"Secret camera bytes!",
        FrameOfReferenceUID="1.2.826.0.1.3680043.10.1000.4",
        SOPInstanceUIDOfConcatenationSource="1.2.826.0.1.3680043.10.1000.5",
        FailedSOPInstanceUIDList=["1.2.826.0.1.3680043.10.1000.6", "1.2.840.10008.1.2"],
        SOPClassesInStudy=["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"],
        ReferencedImageSequence=Sequence(
            [
                _item(
                    ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                    ReferencedSOPInstanceUID="1.2.826.0.1.3680043.10.1000.1.0",
                    ReferencedPatientSequence=Sequence(
                        [_item(PatientName="Deep^Nested", ReferringPhysicianName="Who^Else")]
                    ),
                )
            ]
        ),
        RequestAttributesSequence=Sequence(
            [
                _item(
                    RequestedProcedureID="RP-1",
                    RequestedProcedureDescription="Secret scan",
                    ScheduledProcedureStepID="SPS-1",
                    ReasonForTheRequestedProcedure="Anna fell",
                )
            ]
        ),
        AnatomicRegionSequence=Sequence(
            [
                _item(
                    CodeValue="T-D3000",
                    CodingSchemeDesignator="SRT",
                    CodeMeaning="Chest",
                    CodingSchemeUID="2.16.840.1.113883.6.96",
                )
            ]
        ),
        IssuerOfTheContainerIdentifierSequence=Sequence([_item(LocalNamespaceEntityID="LAB")]),
        ReferencedStudySequence=Sequence(
            [_item(ReferencedSOPInstanceUID="1.2.826.0.1.3680043.10.1000.7")]
        ),
    )
    ds = dcmread(path)
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1000.99"
    ds.file_meta.ImplementationVersionName = "DEIDPIN"
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "private secret")
    ds.save_as(path, enforce_file_format=True)
    order = ">" if syntax == BE else "<"
    with path.open("ab") as fp:  # after Pixel Data: a private block, then trailing padding
        for group, elem, vr, value in (
            (0x7FE1, 0x0010, b"LO", b"ACME 1.0"),
            (0x7FE1, 0x1001, b"LO", b"tail secret "),
            (0xFFFC, 0xFFFC, b"OB", b"\0\0\0\0"),
        ):
            if syntax == IMPLICIT:
                fp.write(struct.pack("<HHI", group, elem, len(value)) + value)
            elif vr == b"OB":
                fp.write(struct.pack(f"{order}HH2sHI", group, elem, vr, 0, len(value)) + value)
            else:
                fp.write(struct.pack(f"{order}HH2sH", group, elem, vr, len(value)) + value)


def _digest(folder: Path, syntax: str, options: tuple[str, ...]) -> tuple[str, str]:
    """SHA-256 of the input instance and of its de-identified copy under `options`."""
    source, target = folder / "in.dcm", folder / "out.dcm"
    _input(source, syntax)
    apply(source, Profile(KEY, frozenset(options)), target)
    return (
        hashlib.sha256(source.read_bytes()).hexdigest(),
        hashlib.sha256(target.read_bytes()).hexdigest(),
    )


CASES = [
    (LE, BASIC),
    (LE, LONGITUDINAL),
    (LE, RETAIN),
    (LE, DESCRIPTORS),
    (LE, MIXED),
    (IMPLICIT, LONGITUDINAL),
    (BE, BASIC),
]


@pytest.mark.parametrize(("syntax", "options"), CASES)
def test_the_deidentified_bytes_are_the_pinned_ones(
    tmp_path: Path, syntax: str, options: tuple[str, ...]
) -> None:
    """The output of the fixed instance is byte for byte the pinned one."""
    source, output = _digest(tmp_path, syntax, options)
    assert source == INPUTS[syntax], "the input changed: recompute the pins (see the docstring)"
    assert output == PINS[(syntax, options)]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            print(case, _digest(Path(tmp), *case))
