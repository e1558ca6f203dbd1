"""The de-identified bytes, pinned: one fixed instance under several option sets and syntaxes.

The instance has PHI at the top level and in nested sequences (defined and undefined
length), private elements, UIDs the table lists and does not list, binary and
multi-valued values, and elements after Pixel Data. Its output digests were computed
with the straightforward transform (every element decoded by pydicom, then re-encoded
by dcmwrite; main at 56c1977, conditional actions by the IOD's Types), so any speed-up
of `router.dicom.deid` or of the rewrite that changes a single output byte fails here.

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
    (LE, BASIC): "db08a65b4c53f803812758ca0f45ac146e69d0b2edfd2f825da83156cee1914e",
    (LE, LONGITUDINAL): "84376ec0ca19b915444a80601578212414db3b431157e25bc5c042e9c18f222f",
    (LE, RETAIN): "97e65292dea1282e1ffb0a60d5e9de42959199c57e4a7869c31703584d601224",
    (LE, DESCRIPTORS): "f1ed2f9ad1a74a0259e25114ccfb8ec6ae3e2e72bb8f2ddbefde3b29feb9fc9b",
    (LE, MIXED): "8e43c990894b88ca3e9f753687dbcb2a964d09ace87ffac2235ad5fdcd127769",
    (IMPLICIT, LONGITUDINAL): "4dac979922a6a1cd08d7f03eae93f8363dc09e56ce5ec9b09b53e6f65f6d26b3",
    (BE, BASIC): "4d64fac21f9b1de400ac128a2bb2a355d89568b17b24b1c5e5a34bc9015e86c9",
}
# transfer syntax -> SHA-256 of the input file
INPUTS: dict[str, str] = {
    LE: "05ab058646be232185f0b1a8aa4a8561c46e1c79250947164cd62676c333037f",
    IMPLICIT: "af45f40ec25bdaa47233eccdaa42bce7e90552eeb4e690aa42b34bdbbf9629bb",
    BE: "61c05cf8f32fb93a17ec93c90aa33420c3b1f829da76fa03c61b98a40a2dba6e",
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
        UID="1.2.826.0.1.3680043.10.1000.10",  # U even under retain_uids
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
