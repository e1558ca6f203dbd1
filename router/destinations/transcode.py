"""Decompression for a destination that refuses a file's compressed transfer syntax.

`decompress()` writes a new file in Explicit (or Implicit) VR Little Endian next to the
spool, decoding one frame at a time straight into it: a multi-frame instance of any size
needs one decoded frame in memory, never all of them. The SOP Instance UID is kept (the
image is the same instance, as Orthanc and DCMTK also keep it); Photometric
Interpretation, Planar Configuration and Number of Frames are set from what the decoder
produced (YBR_FULL / YBR_FULL_422 / YBR_RCT / YBR_ICT JPEG and JPEG 2000 come out RGB);
Lossy Image Compression is kept as it was, and set to 01 when a lossy JPEG had none.

Codecs (pyproject dependencies): pylibjpeg with pylibjpeg-libjpeg (JPEG Baseline,
Extended, Lossless), pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and pylibjpeg-rle (RLE),
pyjpegls (JPEG-LS, which pylibjpeg-libjpeg decodes too), and python-gdcm as the fallback:
a file is decoded whole by one plugin at a time (`PREFERENCE`), the next one tried only
when a plugin fails, so every frame of a file comes from the same decoder. GDCM decodes
what pylibjpeg-libjpeg refuses, 12-bit JPEG Extended with unusual scan parameters above
all (pydicom's own GDCM plugin declines 12-bit JPEG Extended; `_gdcm_frame` does not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom.pixels.decoders.gdcm as pydicom_gdcm
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.pixels.decoders.base import Decoder, DecodeRunner, get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from router import lazy_gdcm
from router.dicom import tags
from router.errors import TranscodeError

PIXEL_DATA = Tag(tags.PIXEL_DATA)  # a BaseTag: the key type of pydicom's element dict
# Only meaningful for encapsulated pixel data: dropped from the decompressed file.
ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
ALWAYS_LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit)
MAX_VALUE_LENGTH = 2**32 - 2  # PS3.5 7.1.1: 0xFFFFFFFF means undefined length
# The order plugins are tried in: the pylibjpeg family and pyjpegls first (fast, and what
# the pixels were checked with), pydicom's own RLE decoder, GDCM last.
PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")


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
    decoder = _decoder(ts)
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
    failures: list[str] = []
    # _write sets only values it derives again on the next attempt: a retry starts clean.
    for plugin in decoding_order(decoder):
        try:
            with src.open("rb") as fp, dst.open("wb") as out:
                fp.seek(raw.value_tell)
                frames_in = _frames(decoder, fp, opts, plugin)
                _write(out, ds, trailing, frames_in, frames, ts, target)
                out.flush()
                os.fsync(out.fileno())
            return
        except Exception as exc:  # a codec's or pydicom's error: corrupt or unsupported data
            failures.append(_reason(plugin, exc))
    dst.unlink(missing_ok=True)
    # One line: it ends up in `queue`'s last-error column and in the log.
    raise TranscodeError("; ".join(failures))


def decoding_order(decoder: Decoder) -> list[str]:
    """The decoder's available plugins in the order decompress() tries them."""
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    return sorted(
        decoder.available_plugins, key=lambda p: (p == "gdcm", rank.get(p, len(PREFERENCE)))
    )


def _decoder(ts: UID) -> Decoder:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise TranscodeError(f"no decoder for {ts.name}") from exc
    if not decoder.is_available:
        raise TranscodeError(
            f"no decoder plugin for {ts.name} is installed: {decoder.missing_dependencies}"
        )
    return decoder


def _reason(plugin: str, exc: Exception) -> str:
    """`plugin: what failed`, on one line. pydicom wraps a plugin's error in a RuntimeError
    whose first line says only that every plugin failed: the lines after it are the cause."""
    if isinstance(exc, TranscodeError):
        return f"{plugin}: {exc}"
    _, _, cause = str(exc).partition("\n")
    if not cause.strip().startswith(f"{plugin}:"):
        cause = f"{plugin}: {type(exc).__name__}: {exc}"
    return " ".join(cause.split())


def _frames(
    decoder: Decoder, fp: Any, opts: dict[str, Any], plugin: str
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(little endian array, image pixel attributes) per frame, decoded one at a time."""
    frames = decoder.iter_array(fp, validate=True, as_rgb=True, decoding_plugin=plugin, **opts)
    for arr, image_pixel in frames:
        yield arr.astype(arr.dtype.newbyteorder("<"), copy=False), dict(image_pixel)


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


# --------------------------------------------------------------------------- GDCM fallback
#
# pydicom's plugin protocol: add_plugin(label, (module, function)) imports the module and
# asks its is_available(uid) and DECODER_DEPENDENCIES. This module answers for GDCM, and
# replaces pydicom's "gdcm" plugin in every decoder that has one (appended, so it is also
# last in pydicom's own order).

DECODER_DEPENDENCIES = pydicom_gdcm.DECODER_DEPENDENCIES
# GDCM's JPEG codecs print to the process's stderr (IJG's "Unsupported JPEG data
# precision 12" while it picks its 12-bit codec): not our format, and not one record per
# line. Each GDCM frame runs with fd 2 captured, one at a time (fd 2 is process-wide).
_GDCM_LOCK = threading.Lock()
_gdcm_log = logging.getLogger("gdcm")


def is_available(uid: str) -> bool:
    """pydicom's plugin protocol: whether GDCM can decode this transfer syntax here.

    Answered without loading GDCM (`router.lazy_gdcm`): it is loaded at its first frame.
    """
    return uid in DECODER_DEPENDENCIES and lazy_gdcm.installed()


def _gdcm_loaded() -> None:
    """Load GDCM, and give pydicom's GDCM plugin the module it could not import."""
    if not pydicom_gdcm.HAVE_GDCM:
        gdcm = lazy_gdcm.load()
        pydicom_gdcm.gdcm = gdcm  # type: ignore[attr-defined]
        pydicom_gdcm.GDCM_VERSION = tuple(int(x) for x in gdcm.Version.GetVersion().split("."))
        pydicom_gdcm.HAVE_GDCM = True


def _gdcm_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame decoded by GDCM: pydicom's plugin, or ours for 12-bit JPEG Extended."""
    printed: list[str] = []
    with _GDCM_LOCK:
        _gdcm_loaded()
        try:
            with _stderr_captured(printed):
                if runner.transfer_syntax == JPEGExtended12Bit and runner.bits_stored > 8:
                    return _gdcm_jpeg_extended(src, runner)
                return pydicom_gdcm._decode_frame(src, runner)
        except Exception as exc:
            if printed:  # what GDCM printed says more than the exception it left behind
                raise ValueError(" | ".join(printed)) from exc
            raise
        finally:
            if printed:
                _gdcm_log.debug("GDCM printed: %s", " | ".join(printed))


def _gdcm_jpeg_extended(src: bytes, runner: DecodeRunner) -> bytes:
    """pydicom's GDCM plugin without its refusal of 12-bit samples (GDCM decodes them)."""
    import gdcm  # type: ignore[import-untyped]  # no stubs; present when is_available

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetValue(fragments.__ref__())
    img = gdcm.Image()
    img.SetNumberOfDimensions(2)
    img.SetDimensions((runner.columns, runner.rows, 1))
    img.SetDataElement(elem)
    pi = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    if runner.samples_per_pixel > 1:
        img.SetPlanarConfiguration(runner.planar_configuration)
    ts = gdcm.TransferSyntax.GetTSType(str.__str__(runner.transfer_syntax))
    img.SetTransferSyntax(gdcm.TransferSyntax(ts))
    bits, signed = runner.bits_stored, runner.pixel_representation
    samples, allocated = runner.samples_per_pixel, runner.bits_allocated
    img.SetPixelFormat(gdcm.PixelFormat(samples, allocated, bits, bits - 1, signed))
    buffer = img.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM could not decode the JPEG Extended frame")
    # GDCM hands char* back as str: its bytes again, as pydicom's plugin does.
    frame: bytes = buffer.encode("utf-8", "surrogateescape")
    return frame


@contextlib.contextmanager
def _stderr_captured(lines: list[str]) -> Iterator[None]:
    """Point fd 2 at a temporary file for the block; its lines are appended to `lines`."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(64 * 1024).decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _install_gdcm() -> None:
    for uid in DECODER_DEPENDENCIES:
        decoder = get_decoder(uid)
        # pydicom 3.0 registers its own for each of these syntaxes; a release that did not
        # must not stop the import (nor must a second call).
        with contextlib.suppress(ValueError):
            decoder.remove_plugin("gdcm")
        with contextlib.suppress(ValueError):
            decoder.add_plugin("gdcm", (__name__, "_gdcm_frame"))


class _PluginFailure(logging.Filter):
    """pydicom logs each plugin that fails on a frame at ERROR, with a traceback. Here a
    failing plugin is followed by the next one, and when every one fails, the
    TranscodeError names each failure: so these records are debug detail."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName == "_decode_frame" and record.exc_info:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_install_gdcm()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_PluginFailure())
