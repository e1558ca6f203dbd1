"""Part-10 files whose dataset is structurally broken, or a deflate bomb, built on disk.

Each starts from a valid dicomgen header (explicit VR little endian) and appends raw
bytes by hand, so the breakage sits after the identity elements: a header read alone
would find nothing wrong.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from tests.dicomgen import make_ct, make_instance

MiB = 1024 * 1024
UNDEFINED = 0xFFFFFFFF
Builder = Callable[[Path], Path]


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _item(tag: int, length: int) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)


def _header(path: Path, **keywords: str) -> tuple[bytes, bytes]:
    """A valid CT header without pixel data: (preamble + file meta, dataset bytes)."""
    make_instance(path, **keywords)
    return _header_of(path)


def _header_of(path: Path) -> tuple[bytes, bytes]:
    """A Part-10 file's (preamble + file meta, dataset bytes)."""
    raw = path.read_bytes()
    offset = 132 + 12 + int(read_file_meta_info(path).FileMetaInformationGroupLength)
    return raw[:offset], raw[offset:]


def appended(path: Path, raw: bytes) -> Path:
    """A valid CT header without pixel data, then `raw` bytes."""
    meta, body = _header(path)
    path.write_bytes(meta + body + raw)
    return path


def truncated_pixel_data(path: Path) -> Path:
    """Pixel Data claiming 1 MiB of which 64 bytes follow."""
    meta, body = _header(path)
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, MiB) + bytes(64)
    path.write_bytes(meta + body + pixels)
    return path


def trailing_garbage(path: Path, seed: int = 0xC210) -> Path:
    """A valid 64 KiB CT followed by 4 KiB of random bytes."""
    make_ct(path, size=64 * 1024)
    with path.open("ab") as fp:
        fp.write(random.Random(seed).randbytes(4096))
    return path


def unclosed_sequence(path: Path) -> Path:
    """Request Attributes Sequence (0040,0275) of undefined length, one item, no delimiter."""
    meta, body = _header(path)
    item = _explicit(0x00400009, b"SH", b"STEP1 ") + _item(0xFFFEE00D, 0)
    seq = struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, UNDEFINED)
    path.write_bytes(meta + body + seq + _item(0xFFFEE000, UNDEFINED) + item)
    return path


def unterminated_fragments(path: Path) -> Path:
    """Encapsulated (JPEG Baseline) Pixel Data whose fragments have no sequence delimiter."""
    meta, body = _header(path)
    ds_meta = read_file_meta_info(path)
    ds_meta.TransferSyntaxUID = JPEGBaseline8Bit
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, UNDEFINED)
    pixels += _item(0xFFFEE000, 0) + _item(0xFFFEE000, 16) + b"\xff\xd8" + bytes(14)
    with path.open("wb") as fp:
        fp.write(meta[:132])
        write_file_meta_info(fp, ds_meta, enforce_standard=True)
        fp.write(body + pixels)
    return path


def deflated_copy(source: Path, dest: Path) -> Path:
    """`source` re-saved by pydicom in Deflated Explicit VR Little Endian."""
    ds = dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dest, enforce_file_format=True)
    return dest


def deflate_bomb(path: Path, inflated: int = 512 * MiB, **keywords: str) -> Path:
    """A deflated CT whose Pixel Data is `inflated` zero bytes: ~1/1000 of that on disk.

    Written in 4 MiB pieces, so building a 512 MiB bomb costs a few MiB of memory.
    """
    meta, body = _header(path, **keywords)
    file_meta = read_file_meta_info(path)
    deflated_meta = FileMetaDataset()
    for elem in file_meta:
        deflated_meta.add(elem)
    deflated_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(4 * MiB)
    with path.open("wb") as fp:
        fp.write(meta[:132])
        write_file_meta_info(fp, deflated_meta, enforce_standard=True)
        fp.write(z.compress(body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated)))
        left = inflated
        while left:
            n = min(left, len(zeros))
            fp.write(z.compress(zeros[:n]))
            left -= n
        fp.write(z.flush())
    return path


# --------------------------------------------------------------------------- mislabelled
# Datasets whose bytes are not in the transfer syntax their file meta (and so the
# presentation context pyn_store proposes) names: issue 22 row 3.


def _implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _with_syntax(path: Path, label: str, body: bytes) -> Path:
    """`path`'s preamble and file meta, its syntax said to be `label`, then `body`."""
    meta = read_file_meta_info(path)
    meta.TransferSyntaxUID = label
    del meta.FileMetaInformationGroupLength  # recomputed for the new UID's length
    preamble = path.read_bytes()[:128]
    with path.open("wb") as fp:
        fp.write(preamble + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.write(body)
    return path


def relabelled(path: Path, real: str, label: str) -> Path:
    """A small CT encoded in `real` (Deflated: deflating Explicit VR LE), its meta saying `label`.

    Its first element is Specific Character Set, as in the campaign that found it.
    """
    deflated = real == DeflatedExplicitVRLittleEndian
    encoded = ExplicitVRLittleEndian if deflated else real
    make_ct(path, size=4096, transfer_syntax=encoded, SpecificCharacterSet="ISO_IR 100")
    _, body = _header_of(path)
    if deflated:
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = z.compress(body) + z.flush()
    return _with_syntax(path, label, body)


def deflated_implicit(path: Path) -> Path:
    """Implicit VR LE bytes, deflated, under Deflated Explicit VR LE (explicit once inflated)."""
    make_ct(path, size=4096, transfer_syntax=ImplicitVRLittleEndian)
    _, body = _header_of(path)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _with_syntax(path, DeflatedExplicitVRLittleEndian, z.compress(body) + z.flush())


def implicit_item(path: Path) -> Path:
    """Explicit VR LE, but the one item of Request Attributes Sequence is Implicit VR."""
    item = _implicit(0x00400009, b"STEP1 ") + _implicit(0x00400253, b"PPS1")
    seq = struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 8 + len(item))
    return appended(path, seq + _item(0xFFFEE000, len(item)) + item)


def implicit_element(path: Path) -> Path:
    """Explicit VR LE, but its last element is written Implicit VR (no VR in its header)."""
    return appended(path, _implicit(0x00400009, b"STEP1 "))


def _relabel(real: str, label: str) -> Builder:
    return lambda path: relabelled(path, real, label)


IMPLICIT, EXPLICIT, BIG = ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian
DEFLATED = DeflatedExplicitVRLittleEndian
# Each is refused 0xC210 by the router: stored, its meta would misstate its encoding.
MISLABELLED: dict[str, Builder] = {
    "explicit-as-implicit": _relabel(EXPLICIT, IMPLICIT),
    "implicit-as-explicit": _relabel(IMPLICIT, EXPLICIT),
    "explicit-as-big-endian": _relabel(EXPLICIT, BIG),
    "implicit-as-big-endian": _relabel(IMPLICIT, BIG),
    "big-endian-as-explicit": _relabel(BIG, EXPLICIT),
    "deflated-as-explicit": _relabel(DEFLATED, EXPLICIT),
    "deflated-as-implicit": _relabel(DEFLATED, IMPLICIT),
    "explicit-as-deflated": _relabel(EXPLICIT, DEFLATED),
    "implicit-deflated-as-deflated": deflated_implicit,
    "implicit-item-in-explicit": implicit_item,
    "implicit-element-in-explicit": implicit_element,
}
# The same encodings, each under its own syntax: stored.
WELL_LABELLED: dict[str, Builder] = {
    "implicit": _relabel(IMPLICIT, IMPLICIT),
    "explicit": _relabel(EXPLICIT, EXPLICIT),
    "big-endian": _relabel(BIG, BIG),
    "deflated": _relabel(DEFLATED, DEFLATED),
}
