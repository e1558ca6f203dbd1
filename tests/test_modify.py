"""`modify` rewrites the header and copies Pixel Data as raw bytes (design §7: flat memory).

File-level cases for every byte order and VR syntax, encapsulated Pixel Data, group
lengths and elements after Pixel Data; each output is compared with what pydicom makes
of the whole dataset (the slow path), and the bytes from Pixel Data on with the input's.
The 1 GB case through the real daemon is in test_modify_memory.py.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from router.actions.modify import apply_modify
from router.config.actions import ModifySpec
from router.dicom.tags import PIXEL_DATA
from router.dicom.walk import transfer_syntax
from router.errors import CannotUnderstand, InvalidStructure
from tests.dicomgen import make_ct

SPEC = ModifySpec(remove=["private"], set={"InstitutionName": "X"})
PIXELS = bytes(range(256)) * 64  # 16 KiB, not a repeating word pattern


def build(
    path: Path, ts: str, *, encapsulated: bool = False, tail: bool = False, icon: bool = False
) -> Path:
    """A small CT with a private block, Pixel Data, and optionally elements after it or an
    icon (a sequence item with its own Pixel Data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstitutionName = "Original Hospital"
    ds.PatientName = "Test^Patient"
    ds.private_block(0x0009, "ROUTER TEST", create=True).add_new(0x01, "LO", "secret")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 64, 128, 16, 1
    if icon:
        item = Dataset()
        item.Rows, item.Columns, item.BitsAllocated, item.SamplesPerPixel = 2, 2, 8, 1
        item.PixelData = b"icon"
        item["PixelData"].VR = "OB"
        item.private_block(0x0011, "ICON VENDOR", create=True).add_new(0x01, "LO", "hidden")
        ds.IconImageSequence = [item]
    if encapsulated:
        ds.PixelData = encapsulate([PIXELS[:5000], PIXELS[5000:]])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = PIXELS
        ds["PixelData"].VR = "OW"
    if tail:
        ds.private_block(0x7FE1, "VENDOR CSA", create=True).add_new(0x10, "OB", b"csa!")
        ds.DataSetTrailingPadding = b"\0" * 8
    ds.save_as(path, enforce_file_format=True)
    return path


def pixel_offset(path: Path) -> int:
    """Where the Pixel Data element starts: the first (7FE0,0010) tag in the file's bytes
    (PIXELS never holds E0 7F or 7F E0, and no header value does)."""
    big = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    offset = path.read_bytes().find(struct.pack(">HH" if big else "<HH", 0x7FE0, 0x0010))
    assert offset > 0
    return offset


def slow_reference(source: Path, spec: ModifySpec) -> Dataset:
    """What pydicom makes of the whole dataset: the result the fast path must equal."""
    ds = dcmread(source)
    if "private" in spec.remove:
        ds.remove_private_tags()
    for name in spec.remove:
        if name != "private" and name in ds:
            del ds[name]
    for keyword, value in spec.set.items():
        setattr(ds, keyword, value)
    return ds


SYNTAXES = [
    pytest.param(ImplicitVRLittleEndian, False, id="implicit-le"),
    pytest.param(ExplicitVRLittleEndian, False, id="explicit-le"),
    pytest.param(ExplicitVRBigEndian, False, id="explicit-be"),
    pytest.param(RLELossless, True, id="encapsulated-undefined-length"),
]


@pytest.mark.parametrize(("ts", "encapsulated"), SYNTAXES)
def test_modify_changes_the_header_and_copies_pixel_data_byte_for_byte(
    tmp_path: Path, ts: str, encapsulated: bool
) -> None:
    """Private block gone, InstitutionName set; everything from Pixel Data on unchanged."""
    source = build(tmp_path / "in.dcm", ts, encapsulated=encapsulated)
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    out = dcmread(target)
    assert out.InstitutionName == "X"
    assert not any(e.tag.is_private for e in out)
    assert out == slow_reference(source, SPEC)
    assert out.file_meta.TransferSyntaxUID == ts
    a, b = source.read_bytes(), target.read_bytes()
    assert b[pixel_offset(target) :] == a[pixel_offset(source) :]


def test_pixel_data_inside_a_sequence_is_part_of_the_header(tmp_path: Path) -> None:
    """An icon's Pixel Data, nested in (0088,0200), does not end the header: the icon's
    private element goes too, and the real Pixel Data is copied raw."""
    source = build(tmp_path / "in.dcm", ExplicitVRLittleEndian, icon=True)
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    out = dcmread(target)
    assert out == slow_reference(source, SPEC)
    assert out.IconImageSequence[0].PixelData == b"icon"
    assert not any(e.tag.is_private for e in out.IconImageSequence[0])
    assert out.PixelData == PIXELS


def test_elements_after_pixel_data_are_copied_when_the_change_does_not_touch_them(
    tmp_path: Path,
) -> None:
    """`set` alone: the private block and padding after Pixel Data stay byte for byte."""
    source = build(tmp_path / "in.dcm", ExplicitVRLittleEndian, tail=True)
    target = tmp_path / "out.dcm"
    spec = ModifySpec(set={"InstitutionName": "X"})
    apply_modify(source, spec, target)
    assert (
        target.read_bytes()[pixel_offset(target) :] == source.read_bytes()[pixel_offset(source) :]
    )
    assert dcmread(target) == slow_reference(source, spec)


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_remove_private_also_removes_private_elements_after_pixel_data(
    tmp_path: Path, ts: str
) -> None:
    """A vendor block at (7FE1,xxxx) goes like any private element; the padding stays."""
    source = build(tmp_path / "in.dcm", ts, tail=True)
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    out = dcmread(target)
    assert out == slow_reference(source, SPEC)
    assert [e.tag for e in out if e.tag >= PIXEL_DATA] == [PIXEL_DATA, 0xFFFCFFFC]


def test_group_lengths_are_dropped_so_none_goes_stale(tmp_path: Path) -> None:
    """A file with (retired) group lengths, made by DCMTK's dcmconv +g: the rewritten header
    has none (pydicom writes none), so no (0008,0000) can disagree with the changed group;
    the rest is the slow path's result and the Pixel Data bytes are the input's."""
    plain = build(tmp_path / "plain.dcm", ExplicitVRLittleEndian)
    source = tmp_path / "in.dcm"
    subprocess.run(["dcmconv", "+g", str(plain), str(source)], check=True)
    assert {0x00080000, 0x00090000, 0x7FE00000} <= set(dcmread(source).keys())
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    out = dcmread(target)
    assert [e.tag for e in out if e.tag.element == 0] == []
    reference = slow_reference(source, SPEC)
    for tag in [e.tag for e in reference if e.tag.element == 0]:
        del reference[tag]
    assert out == reference
    a, b = source.read_bytes(), target.read_bytes()
    assert b[pixel_offset(target) :] == a[pixel_offset(source) :]


def test_removing_pixel_data_takes_the_slow_path_and_works(tmp_path: Path) -> None:
    """`remove: [PixelData]` is applied (through the whole dataset)."""
    source = build(tmp_path / "in.dcm", ExplicitVRLittleEndian)
    target = tmp_path / "out.dcm"
    apply_modify(source, ModifySpec(remove=["PixelData"]), target)
    out = dcmread(target)
    assert "PixelData" not in out
    assert out.InstitutionName == "Original Hospital"


def test_deflated_takes_the_slow_path_and_works(tmp_path: Path) -> None:
    """A deflated dataset is one zlib stream: modified through pydicom whole, still deflated."""
    source = build(tmp_path / "in.dcm", DeflatedExplicitVRLittleEndian)
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    out = dcmread(target)
    assert out.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert out.InstitutionName == "X"
    assert out.PixelData == PIXELS


def test_the_syntax_is_peeked_from_the_meta_bytes_and_an_unusual_meta_left_to_pydicom(
    tmp_path: Path,
) -> None:
    """The deflate check reads the meta's bytes (no dataset); no preamble or a meta cut
    short: InvalidStructure, so pydicom reads the meta instead."""
    deflated = build(tmp_path / "in.dcm", DeflatedExplicitVRLittleEndian)
    with deflated.open("rb") as fp:
        assert transfer_syntax(fp) == DeflatedExplicitVRLittleEndian
    data = deflated.read_bytes()
    for name, broken in [("no-dicm", data[:128] + b"XXXX" + data[132:]), ("short", data[:140])]:
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(broken)
        with path.open("rb") as fp, pytest.raises(InvalidStructure):
            transfer_syntax(fp)


def test_truncated_pixel_data_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    """A Pixel Data length past the end of the file raises CannotUnderstand (0xC210)."""
    source = tmp_path / "in.dcm"
    make_ct(source, size=64 * 1024)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) - 1000])
    target = tmp_path / "out.dcm"
    with pytest.raises(CannotUnderstand, match="truncated"):
        apply_modify(source, SPEC, target)
    assert not target.exists()


def test_an_instance_without_pixel_data_is_modified(tmp_path: Path) -> None:
    """No (7FE0,0010) at all (an SR, say): the whole dataset is the header."""
    source = tmp_path / "in.dcm"
    make_ct(source, size=0, InstitutionName="Original")
    target = tmp_path / "out.dcm"
    apply_modify(source, SPEC, target)
    assert dcmread(target) == slow_reference(source, SPEC)


def test_a_broken_fragment_item_in_encapsulated_pixel_data_is_refused(tmp_path: Path) -> None:
    """A fragment whose item tag is not (FFFE,E000) raises CannotUnderstand (0xC210)."""
    source = build(tmp_path / "in.dcm", RLELossless, encapsulated=True)
    data = bytearray(source.read_bytes())
    first_item = pixel_offset(source) + 12  # after the OB element header
    assert data[first_item : first_item + 4] == struct.pack("<HH", 0xFFFE, 0xE000)
    data[first_item : first_item + 4] = struct.pack("<HH", 0x0008, 0x0016)
    source.write_bytes(bytes(data))
    target = tmp_path / "out.dcm"
    with pytest.raises(CannotUnderstand, match=r"\(0008,0016\) in encapsulated Pixel Data"):
        apply_modify(source, SPEC, target)
    assert not target.exists()
