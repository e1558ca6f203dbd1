"""Decompression for a destination that refuses a file's compressed transfer syntax.

`decompress()` writes a new file in Explicit (or Implicit) VR Little Endian next to the
spool, decoding one frame at a time straight into it: a multi-frame instance of any size
needs one decoded frame in memory, never all of them. The SOP Instance UID is kept (the
image is the same instance, as Orthanc and DCMTK also keep it); Photometric
Interpretation, Planar Configuration and Number of Frames are set from what the decoder
produced (YBR_FULL / YBR_FULL_422 / YBR_RCT / YBR_ICT JPEG and JPEG 2000 come out RGB);
Lossy Image Compression is kept as it was, and set to 01 when a lossy JPEG had none.

Codecs (pyproject dependencies): pylibjpeg with pylibjpeg-libjpeg (JPEG Baseline,
Extended, Lossless), pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and pylibjpeg-rle (RLE), and
pyjpegls (JPEG-LS, which pylibjpeg-libjpeg decodes too); pydicom picks the first
available plugin for each syntax.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from router.dicom import tags
from router.errors import TranscodeError

PIXEL_DATA = Tag(tags.PIXEL_DATA)  # a BaseTag: the key type of pydicom's element dict
# Only meaningful for encapsulated pixel data: dropped from the decompressed file.
ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
ALWAYS_LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit)
MAX_VALUE_LENGTH = 2**32 - 2  # PS3.5 7.1.1: 0xFFFFFFFF means undefined length


def decompress(src: Path, dst: Path, target: str = ExplicitVRLittleEndian) -> None:
    """Write `src`, a compressed file, to `dst` in `target` (Explicit or Implicit VR LE)."""
    if target not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError(f"not an uncompressed little endian syntax: {target}")
    # defer_size: every large value (the compressed pixel data above all) stays on disk.
    ds = dcmread(src, defer_size=1024)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_compressed:
        raise ValueError(f"{src.name} is not compressed ({ts.name})")
    raw = ds._dict.get(PIXEL_DATA)
    if not isinstance(raw, RawDataElement):  # no pixel data: only the syntax changes
        ds.file_meta.TransferSyntaxUID = UID(target)
        ds.walk(lambda *_: None)
        dcmwrite(dst, ds, enforce_file_format=True)
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise TranscodeError(f"no decoder for {ts.name}") from exc
    if not decoder.is_available:
        raise TranscodeError(
            f"no decoder plugin for {ts.name} is installed: {decoder.missing_dependencies}"
        )
    trailing = Dataset()
    for tag in [t for t in list(ds.keys()) if t > PIXEL_DATA]:
        trailing[tag] = ds[tag]
        del ds[tag]
    del ds[PIXEL_DATA]
    for offsets in ENCAPSULATION_ONLY:
        if offsets in ds:
            del ds[offsets]
    opts = as_pixel_options(ds, transfer_syntax_uid=ts, pixel_keyword="PixelData")
    frames = int(opts.get("number_of_frames", 1) or 1)
    try:
        with src.open("rb") as fp, dst.open("wb") as out:
            fp.seek(raw.value_tell)
            _write(out, ds, trailing, _frames(decoder, fp, opts), frames, ts, target)
            out.flush()
            os.fsync(out.fileno())
    except TranscodeError:
        dst.unlink(missing_ok=True)
        raise
    except Exception as exc:  # a codec's or pydicom's error: corrupt or unsupported data
        dst.unlink(missing_ok=True)
        # One line: it ends up in `queue`'s last-error column and in the log.
        raise TranscodeError(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc


def _frames(decoder: Any, fp: Any, opts: dict[str, Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(little endian array, image pixel attributes) per frame, decoded one at a time."""
    for arr, image_pixel in decoder.iter_array(fp, validate=True, as_rgb=True, **opts):
        yield arr.astype(arr.dtype.newbyteorder("<"), copy=False), image_pixel


def _write(
    out: Any,
    ds: Dataset,
    trailing: Dataset,
    frames: Iterator[tuple[Any, dict[str, Any]]],
    count: int,
    ts: UID,
    target: str,
) -> None:
    first, image_pixel = next(frames)
    frame_bytes = first.nbytes
    bits = int(ds.BitsAllocated)
    if first.dtype.itemsize * 8 != bits:
        raise TranscodeError(
            f"decoded {first.dtype.itemsize * 8}-bit samples, Bits Allocated is {bits}"
        )
    length = frame_bytes * count
    if length + (length % 2) > MAX_VALUE_LENGTH:
        raise TranscodeError("decompressed pixel data would exceed 4 GiB, DICOM's value limit")
    ds.PhotometricInterpretation = image_pixel["photometric_interpretation"]
    if int(image_pixel["samples_per_pixel"]) > 1:
        ds.PlanarConfiguration = int(image_pixel["planar_configuration"])
    if "NumberOfFrames" in ds or count > 1:
        ds.NumberOfFrames = count
    if ts in ALWAYS_LOSSY and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, always 01
    ds.file_meta.TransferSyntaxUID = UID(target)
    # Convert every raw element now: some files' datasets are not in their meta's encoding
    # (pydicom reads them anyway) and would otherwise be copied as raw bytes.
    ds.walk(lambda *_: None)
    implicit = target == ImplicitVRLittleEndian
    dcmwrite(out, ds, enforce_file_format=True)
    tag = struct.pack("<HH", 0x7FE0, 0x0010)
    if implicit:
        out.write(tag + struct.pack("<L", length + (length % 2)))
    else:
        vr = b"OB" if bits <= 8 else b"OW"
        out.write(tag + vr + b"\0\0" + struct.pack("<L", length + (length % 2)))
    out.write(first.tobytes())
    written = 1
    for arr, _ in frames:
        if arr.nbytes != frame_bytes:
            raise TranscodeError(f"frame {written + 1} decodes to {arr.nbytes} bytes")
        out.write(arr.tobytes())
        written += 1
    if written != count:
        raise TranscodeError(f"{written} frames decoded, Number of Frames is {count}")
    if length % 2:
        out.write(b"\0")
    if len(trailing):
        fp = DicomFileLike(out)
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, trailing)
