"""Generate DICOM Part-10 test files on disk.

Pixel data is never built in memory as a whole: the dataset header is written with
pydicom, then the Pixel Data element header by hand, then a small repeated pattern
chunk until the requested size is reached. A 1 GB multi-frame file therefore costs a
few MiB of RAM to create.
"""

from __future__ import annotations

import datetime
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmwrite
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "CHUNK_BYTES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "make_ct",
    "make_instance",
    "make_multiframe",
    "make_series",
    "modality_for",
]

# 4 MiB: big enough that writing 1 GB takes ~256 write() calls, small enough for flat RSS.
CHUNK_BYTES = 4 * 1024 * 1024

# Native (uncompressed) syntaxes only: pixel bytes are appended raw after the header, which
# is not possible for deflated or encapsulated (compressed) syntaxes.
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
)

_PIXEL_DATA_TAG = Tag(0x7FE0, 0x0010)
# Largest defined length: 0xFFFFFFFF means "undefined length", and lengths must be even.
_MAX_ELEMENT_LENGTH = 0xFFFFFFFE

# A plausible Modality per SOP class prefix; anything unknown is "OT" (other).
_MODALITY_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.2", "CT"),
    ("1.2.840.10008.5.1.4.1.1.4", "MR"),
    ("1.2.840.10008.5.1.4.1.1.3.1", "US"),
    ("1.2.840.10008.5.1.4.1.1.6", "US"),
    ("1.2.840.10008.5.1.4.1.1.1.2", "MG"),
    ("1.2.840.10008.5.1.4.1.1.1.3", "IO"),
    ("1.2.840.10008.5.1.4.1.1.1", "DX"),
    ("1.2.840.10008.5.1.4.1.1.12", "XA"),
    ("1.2.840.10008.5.1.4.1.1.20", "NM"),
    ("1.2.840.10008.5.1.4.1.1.128", "PT"),
    ("1.2.840.10008.5.1.4.1.1.130", "PT"),
    ("1.2.840.10008.5.1.4.1.1.9", "ECG"),
    ("1.2.840.10008.5.1.4.1.1.88", "SR"),
    ("1.2.840.10008.5.1.4.1.1.11", "PR"),
    ("1.2.840.10008.5.1.4.1.1.481.1", "RTIMAGE"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN"),
    ("1.2.840.10008.5.1.4.1.1.104", "DOC"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
)


def modality_for(sop_class_uid: str) -> str:
    """Return a plausible Modality code for a SOP Class UID ("OT" if unknown)."""
    for prefix, modality in _MODALITY_BY_PREFIX:
        # Match whole UID components only, so "...1.1.2" does not claim "...1.1.20".
        if sop_class_uid == prefix or sop_class_uid.startswith(prefix + "."):
            return modality
    return "OT"


def _check_ts(transfer_syntax: str) -> UID:
    """Validate that we can stream native pixel data in this transfer syntax."""
    ts = UID(transfer_syntax)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax {ts} ({ts.name}) not supported; "
            f"use one of {sorted(SUPPORTED_TRANSFER_SYNTAXES)}"
        )
    return ts


def _base_dataset(
    sop_class_uid: str,
    sop_instance_uid: str,
    study_uid: str,
    series_uid: str,
    transfer_syntax: UID,
) -> Dataset:
    """Build the file meta and the patient/study/series/instance header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = transfer_syntax

    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality_for(sop_class_uid)
    ds.Manufacturer = "dicom-router tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _add_image_module(ds: Dataset, rows: int, columns: int, frames: int | None) -> int:
    """Add Image Pixel attributes for 16-bit MONOCHROME2; return the pixel byte count."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    # The pattern stays below 4096, so 12 stored bits (typical CT) is truthful.
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if ds.Modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
    nbytes = rows * columns * (frames or 1) * 2
    if nbytes > _MAX_ELEMENT_LENGTH:
        raise ValueError(f"pixel data of {nbytes} bytes does not fit a defined-length element")
    return nbytes


def _pattern_chunk(columns: int, big_endian: bool) -> bytes:
    """Return CHUNK_BYTES of a 12-bit diagonal gradient as 16-bit words."""
    words = CHUNK_BYTES // 2
    index = np.arange(words, dtype=np.uint32)
    # column + row, wrapped at 4096: shows as a diagonal ramp in a viewer, fits 12 bits.
    values = ((index % max(columns, 1)) + (index // max(columns, 1))) % 4096
    return values.astype(">u2" if big_endian else "<u2").tobytes()


def _pixel_element_header(nbytes: int, transfer_syntax: UID) -> bytes:
    """Encode the (7FE0,0010) OW element header for a native transfer syntax."""
    if transfer_syntax == ImplicitVRLittleEndian:
        # Implicit VR: tag (group, element) + 4-byte length.
        return struct.pack("<HHI", 0x7FE0, 0x0010, nbytes)
    # Explicit VR: tag + "OW" + 2 reserved bytes + 4-byte length (OW has the long form).
    fmt = ">HH2sHI" if transfer_syntax == ExplicitVRBigEndian else "<HH2sHI"
    return struct.pack(fmt, 0x7FE0, 0x0010, b"OW", 0, nbytes)


def _stream_pixels(fp: BinaryIO, nbytes: int, chunk: bytes) -> None:
    """Write nbytes of the repeated pattern chunk (nbytes is even, so words stay aligned)."""
    remaining = nbytes
    view = memoryview(chunk)
    while remaining > 0:
        n = min(remaining, len(view))
        fp.write(view[:n])
        remaining -= n


def _write(path: Path, ds: Dataset, pixel_nbytes: int) -> None:
    """Write ds as a Part-10 file, then append pixel_nbytes of streamed Pixel Data."""
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if pixel_nbytes and any(elem.tag >= _PIXEL_DATA_TAG for elem in ds):
        # Elements must be in ascending tag order; the streamed Pixel Data goes last.
        raise ValueError("dataset already has elements at or after (7FE0,0010)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fp:
        # enforce_file_format: preamble + DICM + complete group 0002 (incl. implementation UID).
        dcmwrite(fp, ds, enforce_file_format=True)
        if pixel_nbytes:
            fp.write(_pixel_element_header(pixel_nbytes, transfer_syntax))
            columns = int(ds.get("Columns", 512))
            chunk = _pattern_chunk(columns, transfer_syntax == ExplicitVRBigEndian)
            _stream_pixels(fp, pixel_nbytes, chunk)


def _apply_keywords(ds: Dataset, keywords: dict[str, Any]) -> None:
    """Set extra attributes by DICOM keyword; a typo raises instead of being ignored."""
    for keyword, value in keywords.items():
        # pydicom would otherwise store an unknown CamelCase name as a plain attribute.
        if tag_for_keyword(keyword) is None:
            raise TypeError(f"unexpected argument {keyword!r}: not a DICOM keyword")
        setattr(ds, keyword, value)


def make_instance(
    path: str | Path,
    sop_class_uid: str = CTImageStorage,
    *,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_bytes: int = 0,
    **keywords: Any,
) -> UID:
    """Write one Part-10 instance of any SOP class and return its SOP Instance UID.

    pixel_bytes > 0 adds a single-frame 16-bit MONOCHROME2 image of about that size
    (square, so Rows*Columns*2 <= pixel_bytes). Extra DICOM keywords override defaults.
    """
    ts = _check_ts(transfer_syntax)
    uid = UID(sop_instance_uid or generate_uid())
    ds = _base_dataset(
        sop_class_uid, uid, study_uid or generate_uid(), series_uid or generate_uid(), ts
    )
    if pixel_bytes > 0 and "NumberOfFrames" in keywords:
        raise ValueError("make_instance writes single frames; use make_multiframe")
    pixel_nbytes = 0
    if pixel_bytes > 0:
        side = max(1, math.isqrt(pixel_bytes // 2))
        pixel_nbytes = _add_image_module(ds, side, side, None)
    _apply_keywords(ds, keywords)
    _write(Path(path), ds, pixel_nbytes)
    return uid


def make_ct(path: str | Path, size: int = 512 * 1024, **kw: Any) -> UID:
    """Write a CT Image Storage instance with ~size bytes of pixels (default 512x512x16 bit)."""
    return make_instance(path, CTImageStorage, pixel_bytes=size, **kw)


def make_multiframe(
    path: str | Path,
    size_bytes: int,
    *,
    sop_class_uid: str = MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    rows: int = 512,
    columns: int = 512,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    private_creator: str | None = None,
    **keywords: Any,
) -> UID:
    """Stream a multi-frame 16-bit instance of ~size_bytes (frames of rows x columns).

    Default class is Multi-frame Grayscale Word Secondary Capture; peak memory is one
    CHUNK_BYTES pattern whatever the size (up to ~4 GiB, the defined-length limit).
    private_creator adds a private block (0009,0010) with one element, (0009,1001) LO.
    """
    ts = _check_ts(transfer_syntax)
    frame_bytes = rows * columns * 2
    frames = max(1, round(size_bytes / frame_bytes))
    uid = UID(sop_instance_uid or generate_uid())
    ds = _base_dataset(
        sop_class_uid, uid, study_uid or generate_uid(), series_uid or generate_uid(), ts
    )
    # Multi-frame SC module: how the frames follow each other (here: in time).
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = 40.0
    if ds.Modality == "OT":
        ds.ConversionType = "WSD"  # workstation: SC General Equipment, Type 1
    pixel_nbytes = _add_image_module(ds, rows, columns, frames)
    if private_creator is not None:
        ds.private_block(0x0009, private_creator, create=True).add_new(0x01, "LO", "private")
    _apply_keywords(ds, keywords)
    _write(Path(path), ds, pixel_nbytes)
    return uid


def make_series(
    directory: str | Path,
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **kw: Any,
) -> list[Path]:
    """Write n CT instances of one study/series as 0001.dcm, 0002.dcm, ...; return the paths."""
    directory = Path(directory)
    study = study_uid or generate_uid()
    series = series_uid or generate_uid()
    paths: list[Path] = []
    for i in range(1, n + 1):
        path = directory / f"{i:04d}.dcm"
        make_ct(path, study_uid=study, series_uid=series, InstanceNumber=i, **kw)
        paths.append(path)
    return paths


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories into the (sorted) files below them; keep plain files as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out
