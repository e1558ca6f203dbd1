"""router.dicom.rawwrite: a header read from a file written back as dcmwrite writes it."""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.dicom.rawwrite import write_part10
from tests.dicomgen import make_instance


def _header(tmp_path: Path, syntax: str) -> Dataset:
    """The header (up to Pixel Data) of an instance: a sequence, odd values, OB, a UID list."""
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    path = tmp_path / "in.dcm"
    make_instance(
        path,
        transfer_syntax=syntax,
        pixel_bytes=512,
        PatientName="Odd^Len",
        ImageComments="odd",
        MakerNote=b"\1\2\3\4",  # OB: the explicit header with a 4-byte length
        ReferencedImageSequence=Sequence([item]),
        FailedSOPInstanceUIDList=["1.2.3", "1.2.3.4"],
        ReferringPhysicianName="",
    )
    with path.open("rb") as fp:
        return read_partial(fp, stop_when=lambda tag, vr, length: int(tag) >= 0x7FE00010)


def _both(header: Dataset) -> tuple[bytes, bytes]:
    ours, theirs = BytesIO(), BytesIO()
    dcmwrite(theirs, copy.deepcopy(header), enforce_file_format=True)
    write_part10(ours, header)
    return ours.getvalue(), theirs.getvalue()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_a_header_is_written_as_dcmwrite_writes_it(tmp_path: Path, syntax: str) -> None:
    """Raw and decoded elements, a changed SOP Instance UID: the bytes of dcmwrite."""
    header = _header(tmp_path, syntax)
    header.SOPInstanceUID = "1.2.3.999"  # the meta's Media Storage SOP Instance UID follows
    header.StationName = "CHANGED"
    ours, theirs = _both(header)
    assert b"1.2.3.999" in ours
    assert ours == theirs


def test_another_character_set_is_written_by_pydicom(tmp_path: Path) -> None:
    """A header whose Specific Character Set changed is re-encoded whole, as dcmwrite does."""
    header = _header(tmp_path, ExplicitVRLittleEndian)
    header.SpecificCharacterSet = "ISO_IR 192"
    header.PatientName = "Jöns^Åsa"
    ours, theirs = _both(header)
    assert "Jöns".encode() in ours
    assert ours == theirs
