"""Writing a header read from a file back, its undecoded elements as the bytes they were.

`write_part10(out, ds)` writes what `dcmwrite(out, ds, enforce_file_format=True)` writes
(preamble, DICM, the file meta with its group length and its Media Storage UIDs in step
with the dataset's, then the dataset in the meta's syntax), byte for byte. The dataset's
undecoded (raw) elements, most of a header that modify or deidentify rewrites, go out as
one write each: tag, VR, length and their original value. pydicom buffers every element
apart, which cost the rewrite about a quarter of its CPU. A decoded element, a raw one
of undefined length and anything unusual (another syntax or character set than read,
a deflated or private syntax, group 0000 or 0002 in the dataset) is left to pydicom.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom import dcmwrite
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO, DicomFileLike, DicomIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from router.dicom.tags import UNDEFINED_LENGTH

PREAMBLE = b"\0" * 128


def write_part10(out: BinaryIO, ds: Dataset) -> None:
    """`dcmwrite(out, ds, enforce_file_format=True)`, faster for a header read from a file.

    Changes `ds.file_meta` as dcmwrite changes its copy (the caller owns `ds`).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    preamble = getattr(ds, "preamble", None) or PREAMBLE
    if meta is None or not _plain(ds, syntax) or len(preamble) != 128:
        dcmwrite(out, ds, enforce_file_format=True)  # what it does (or raises) for those
        return
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        ours, theirs = meta.get(meta_keyword), ds.get(keyword)
        if ours is None or (theirs and theirs != ours):
            setattr(meta, meta_keyword, theirs)
    fp = DicomFileLike(out)
    fp.is_implicit_VR, fp.is_little_endian = False, True
    fp.write(preamble + b"DICM")
    if not _write_meta(fp, meta):
        write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_implicit_VR, fp.is_little_endian = ds.original_encoding  # type: ignore[assignment]
    write_elements(fp, ds)


def _plain(ds: Dataset, syntax: UID | None) -> bool:
    """True when `ds` goes out as it was read: a public syntax (not deflated) that is the
    encoding it was read in, its character set unchanged, no command or meta element."""
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_deflated:
        return False
    if (syntax.is_implicit_VR, syntax.is_little_endian) != ds.original_encoding:
        return False
    if ds.original_character_set != ds._character_set:
        return False
    return not any(tag >> 16 in (0, 2) for tag in ds.keys())  # noqa: SIM118 (raw)


# What `write_file_meta_info(enforce_standard=True)` would add when missing or empty.
_META_NEEDED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)
_GROUP_LENGTH = struct.Struct("<HH2sHI")


def _write_meta(fp: DicomIO, meta: Dataset) -> bool:
    """`write_file_meta_info(fp, meta, enforce_standard=True)` for a meta it would leave
    as it is (the usual one, read from a file): the group length and the raw elements.
    False, having written nothing, for any other."""
    if any(tag >> 16 != 2 for tag in meta.keys()):  # noqa: SIM118 (raw)
        return False
    for tag in _META_NEEDED:
        elem = meta.get_item(tag) if tag in meta else None
        if elem is None or (not elem.length if isinstance(elem, RawDataElement) else elem.is_empty):
            return False
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_elements(body, meta, group_lengths=False)
    data = body.getvalue()
    meta.FileMetaInformationGroupLength = len(data)
    fp.write(_GROUP_LENGTH.pack(2, 0, b"UL", 4, len(data)) + data)
    return True


def write_elements(fp: DicomIO, ds: Dataset, *, group_lengths: bool = True) -> None:
    """pydicom's `write_dataset` for `ds` in the encoding it was read in (set on `fp`);
    `group_lengths` False leaves out every group length (the file meta's is written first)."""
    order = "<" if fp.is_little_endian else ">"
    implicit = fp.is_implicit_VR
    plain = struct.Struct(f"{order}HHI").pack  # implicit: tag, 4-byte length
    short = struct.Struct(f"{order}HH2sH").pack  # explicit: tag, VR, 2-byte length
    long = struct.Struct(f"{order}HH2s2xI").pack  # explicit: tag, VR, 0000, 4-byte length
    charset = ds.get("SpecificCharacterSet", default_encoding)
    for tag in sorted(ds.keys()):
        if tag & 0xFFFF == 0 and (tag >> 16 > 6 or not group_lengths):
            continue  # retired group lengths are not written (as pydicom does)
        elem = ds.get_item(tag)
        value = elem.value if isinstance(elem, RawDataElement) else None
        if (
            not isinstance(elem, RawDataElement)
            or not isinstance(value, bytes)
            or elem.length == UNDEFINED_LENGTH
        ):
            write_data_element(fp, elem, charset)
            continue
        group, number, size = tag >> 16, tag & 0xFFFF, len(value)
        if implicit:
            fp.write(plain(group, number, size) + value)
        elif elem.VR in EXPLICIT_VR_LENGTH_32:
            fp.write(long(group, number, elem.VR.encode(), size) + value)
        elif elem.VR is not None and size <= 0xFFFF:
            fp.write(short(group, number, elem.VR.encode(), size) + value)
        else:
            write_data_element(fp, elem, charset)  # too long for its VR: pydicom makes it UN
