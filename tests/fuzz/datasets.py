"""Fuzz datasets: valid bases, and structure-aware mutations of their encoded bytes.

Each base is a real dataset (tests/dicomgen.py's CT, pydicom's bundled test files, one
with undefined-length sequences) encoded once in its transfer syntax, with a placeholder
SOP Instance UID that every case replaces by its own (same length, so element offsets
stay put): a case's file in the archive is then known by name.
"""

from __future__ import annotations

import itertools
import random
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from tests.dicomgen import make_ct
from tests.fuzz.oracle import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE, LONG_VRS, UNDEFINED

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
PLACEHOLDER = UID_PREFIX + "1" * 32  # 58 characters: even, no padding
SEQ_TAG = 0x00081140  # Referenced Image Sequence, for deep nesting


def case_uid(rng: random.Random) -> str:
    """A fresh SOP Instance UID as long as the placeholder."""
    return UID_PREFIX + str(rng.randrange(10**31, 10**32))


@dataclass(frozen=True)
class Base:
    """One valid dataset encoded in `transfer_syntax` (inflated form when deflated)."""

    name: str
    sop_class: str
    transfer_syntax: str
    body: bytes  # with PLACEHOLDER as SOP Instance UID; never deflated here


@dataclass(frozen=True)
class Element:
    """Where one element (or item/delimiter) sits in an encoded dataset."""

    pos: int
    tag: int
    vr: str  # "" for items, delimiters and implicit VR
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4
    length: int
    depth: int
    end: int  # end of the header (value follows)


def _encode(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _with_undefined_sequences(ds: Dataset) -> Dataset:
    items = []
    for n in range(3):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = f"1.2.3.{n}"
        item.is_undefined_length_sequence_item = True
        items.append(item)
    ds.ReferencedImageSequence = Sequence(items)
    ds["ReferencedImageSequence"].is_undefined_length = True
    return ds


@cache
def bases() -> tuple[Base, ...]:
    """The valid datasets every mutation starts from."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.dcm"
        make_ct(path, size=1024, sop_instance_uid=PLACEHOLDER)
        generated = dcmread(path)
        nested = _with_undefined_sequences(dcmread(path))
    sources: list[tuple[str, Dataset, str]] = [
        ("dicomgen-ct", generated, EXPLICIT_LE),
        ("dicomgen-ct-implicit", generated, IMPLICIT_LE),
        ("undefined-length-sq", nested, EXPLICIT_LE),
    ]
    for name, syntax in (("CT_small.dcm", EXPLICIT_LE), ("MR_small.dcm", EXPLICIT_LE),
                         ("rtplan.dcm", IMPLICIT_LE)):
        found = get_testdata_file(name)
        assert found is not None, f"pydicom test file {name} missing"
        bundled = dcmread(found)
        bundled.SOPInstanceUID = PLACEHOLDER
        sources.append((name.removesuffix(".dcm"), bundled, syntax))
    for name, ds, syntax in sources:
        body = _encode(ds, syntax == IMPLICIT_LE)
        assert body.count(PLACEHOLDER.encode()) == 1, name
        out.append(Base(name, str(ds.SOPClassUID), syntax, body))
    return tuple(out)


def index(body: bytes, implicit: bool) -> list[Element]:
    """Every element, item and delimiter header of a valid encoded dataset, in stream order."""
    out: list[Element] = []
    ends: list[int | None] = [len(body)]  # open containers; None = undefined length
    sq: list[bool] = [False]  # is each open container a sequence?
    imp: list[bool] = [implicit]
    pos = 0
    while pos < len(body):
        while ends[-1] is not None and pos == ends[-1]:
            ends.pop(), sq.pop(), imp.pop()
        group, elem, *_ = struct.unpack_from("<HHI", body, pos)
        tag, depth = group << 16 | elem, len(ends) - 1
        if group == 0xFFFE or imp[-1]:
            vr, size, length_at = "", 4, pos + 4
            if group != 0xFFFE:
                vr = "SQ" if _is_sq(tag) else ""
        else:
            vr = body[pos + 4 : pos + 6].decode("latin-1")
            size = 4 if vr in LONG_VRS else 2
            length_at = pos + 8 if size == 4 else pos + 6
        length = int.from_bytes(body[length_at : length_at + size], "little")
        end = length_at + size
        out.append(Element(pos, tag, vr, length_at, size, length, depth, end))
        pos = end
        if tag in (0xFFFEE00D, 0xFFFEE0DD):
            ends.pop(), sq.pop(), imp.pop()
        elif tag == 0xFFFEE000 or (vr in ("SQ", "UN") and length == UNDEFINED) or vr == "SQ":
            ends.append(None if length == UNDEFINED else end + length)
            sq.append(tag != 0xFFFEE000)
            imp.append(imp[-1] or vr == "UN")
        else:
            pos += length
    return out


@cache
def base_index(base: Base) -> list[Element]:
    """`index` of a base; a case's UID has the placeholder's length, so offsets hold."""
    return index(base.body, base.transfer_syntax == IMPLICIT_LE)


def _is_sq(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


# --------------------------------------------------------------------------- mutations

Mutation = Callable[[random.Random, bytes, list[Element], bool], bytes]


def _set_length(body: bytes, e: Element, value: int) -> bytes:
    value &= (1 << (8 * e.length_size)) - 1
    return body[: e.length_at] + value.to_bytes(e.length_size, "little") + body[e.end :]


def _pick(rng: random.Random, els: list[Element], top: bool = False) -> Element:
    pool = [e for e in els if e.depth == 0] if top else els
    return rng.choice(pool or els)


def _top_spans(body: bytes, els: list[Element]) -> list[tuple[int, int]]:
    starts = [e.pos for e in els if e.depth == 0] + [len(body)]
    return list(itertools.pairwise(starts))


def m_valid(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    return body


def m_truncate(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    return body[: rng.randrange(len(body))]


def m_truncate_in_header(rng: random.Random, body: bytes, els: list[Element],
                         implicit: bool) -> bytes:
    e = _pick(rng, els)
    return body[: rng.randrange(e.pos + 1, e.end)]


def m_length_huge(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    e = _pick(rng, els)
    return _set_length(body, e, rng.choice([0xFFFFFFFE, 0x7FFFFFFF, 0xFFFF, 0xFFF0, 1 << 30]))


def m_length_zero(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    return _set_length(body, _pick(rng, [e for e in els if e.length] or els), 0)


def m_length_off_by_one(rng: random.Random, body: bytes, els: list[Element],
                        implicit: bool) -> bytes:
    e = _pick(rng, [e for e in els if e.length != UNDEFINED] or els)
    return _set_length(body, e, e.length + rng.choice([-2, -1, 1, 2]))


def m_length_random(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    e = _pick(rng, els)
    return _set_length(body, e, rng.getrandbits(8 * e.length_size))


def m_undefined_length_non_sq(rng: random.Random, body: bytes, els: list[Element],
                              implicit: bool) -> bytes:
    pool = [e for e in els if (e.length_size == 4 and e.vr not in ("SQ", "")) or
            (implicit and e.vr == "" and e.tag >> 16 != 0xFFFE)]
    return _set_length(body, rng.choice(pool or els), UNDEFINED)


def m_remove_delimiter(rng: random.Random, body: bytes, els: list[Element],
                       implicit: bool) -> bytes:
    pool = [e for e in els if e.tag in (0xFFFEE00D, 0xFFFEE0DD)]
    if not pool:
        return m_truncate(rng, body, els, implicit)
    e = rng.choice(pool)
    return body[: e.pos] + body[e.end :]


def m_append_garbage(rng: random.Random, body: bytes, els: list[Element],
                     implicit: bool) -> bytes:
    return body + rng.randbytes(rng.randrange(1, 200))


def m_swap_elements(rng: random.Random, body: bytes, els: list[Element],
                    implicit: bool) -> bytes:
    spans = _top_spans(body, els)
    n = rng.randrange(len(spans) - 1)
    (a0, a1), (b0, b1) = spans[n], spans[n + 1]
    return body[:a0] + body[b0:b1] + body[a0:a1] + body[b1:]


def m_duplicate_element(rng: random.Random, body: bytes, els: list[Element],
                        implicit: bool) -> bytes:
    a0, a1 = rng.choice(_top_spans(body, els))
    return body[:a1] + body[a0:a1] + body[a1:]


def m_bad_vr(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    pool = [e for e in els if e.vr and e.tag >> 16 != 0xFFFE]
    if implicit or not pool:
        return m_bit_flip(rng, body, els, implicit)
    e = rng.choice(pool)
    vr = rng.choice([b"XX", b"\0\0", b"ob", rng.randbytes(2), b"SQ", b"OB", b"UN", b"US"])
    return body[: e.pos + 4] + vr + body[e.pos + 6 :]


def m_bit_flip(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    out = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def m_header_bit_flip(rng: random.Random, body: bytes, els: list[Element],
                      implicit: bool) -> bytes:
    e = _pick(rng, els)
    out = bytearray(body)
    out[rng.randrange(e.pos, e.end)] ^= 1 << rng.randrange(8)
    return bytes(out)


def m_byte_insert(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    at = rng.randrange(len(body))
    return body[:at] + rng.randbytes(rng.randint(1, 8)) + body[at:]


def m_byte_delete(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    at = rng.randrange(len(body))
    return body[:at] + body[at + rng.randint(1, 8) :]


def _nest(depth: int, implicit: bool, closed: bool) -> bytes:
    group, elem = SEQ_TAG >> 16, SEQ_TAG & 0xFFFF
    sq = struct.pack("<HHI", group, elem, UNDEFINED) if implicit else \
        struct.pack("<HH2sHI", group, elem, b"SQ", 0, UNDEFINED)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
    ends = struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    return (sq + item) * depth + (ends * depth if closed else b"")


def _insert_top(body: bytes, els: list[Element], tag: int, data: bytes) -> bytes:
    at = next((e.pos for e in els if e.depth == 0 and e.tag >= tag), len(body))
    skip = next((e for e in els if e.depth == 0 and e.tag == tag), None)
    rest = at
    if skip is not None:  # replace an existing sequence of that tag
        later = [e.pos for e in els if e.depth == 0 and e.pos > skip.pos]
        rest = later[0] if later else len(body)
    return body[:at] + data + body[rest:]


def m_deep_nesting(rng: random.Random, body: bytes, els: list[Element], implicit: bool) -> bytes:
    depth = rng.choice([64, 500, 2000, 5000])
    return _insert_top(body, els, SEQ_TAG, _nest(depth, implicit, closed=True))


def m_deep_nesting_unclosed(rng: random.Random, body: bytes, els: list[Element],
                            implicit: bool) -> bytes:
    depth = rng.choice([64, 500, 2000, 5000])
    return _insert_top(body, els, SEQ_TAG, _nest(depth, implicit, closed=False))


def m_trailing_padding_huge(rng: random.Random, body: bytes, els: list[Element],
                            implicit: bool) -> bytes:
    """Data Set Trailing Padding announcing far more bytes than follow."""
    header = struct.pack("<HHI", 0xFFFC, 0xFFFC, 0xFFFFFFF0) if implicit else \
        struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 0xFFFFFFF0)
    return _insert_top(body, els, 0xFFFCFFFC, header + rng.randbytes(64))


MUTATIONS: dict[str, Mutation] = {
    "valid": m_valid,
    "truncate": m_truncate,
    "truncate-in-header": m_truncate_in_header,
    "length-huge": m_length_huge,
    "length-zero": m_length_zero,
    "length-off-by-one": m_length_off_by_one,
    "length-random": m_length_random,
    "undefined-length-non-sq": m_undefined_length_non_sq,
    "remove-delimiter": m_remove_delimiter,
    "append-garbage": m_append_garbage,
    "out-of-order-tags": m_swap_elements,
    "duplicate-element": m_duplicate_element,
    "bad-vr": m_bad_vr,
    "bit-flip": m_bit_flip,
    "header-bit-flip": m_header_bit_flip,
    "byte-insert": m_byte_insert,
    "byte-delete": m_byte_delete,
    "deep-nesting": m_deep_nesting,
    "deep-nesting-unclosed": m_deep_nesting_unclosed,
    "padding-huge-length": m_trailing_padding_huge,
}


# --------------------------------------------------------------------------- deflate

BOMB_BYTES = 128 * 1024 * 1024


def deflate(data: bytes) -> bytes:
    """Raw deflate, as Deflated Explicit VR Little Endian wants (PS3.5 A.5)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@cache
def _deflated_zeros(nbytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    out = [compressor.compress(zeros) for _ in range(nbytes >> 20)]
    return b"".join(out) + compressor.flush()


def deflate_bomb(body: bytes, nbytes: int = BOMB_BYTES) -> bytes:
    """A valid dataset ending in `nbytes` of zero padding: tiny deflated, huge inflated."""
    end = next((e.pos for e in index(body, False) if e.tag == 0xFFFCFFFC), len(body))
    header = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, nbytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # A full flush ends on a byte boundary and forgets the window: the cached zeros,
    # compressed on their own, can follow as they are.
    head = compressor.compress(body[:end] + header) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + _deflated_zeros(nbytes)


DEFLATE_KINDS = ("deflate-valid", "deflate-inner", "deflate-bit-flip", "deflate-truncate",
                 "deflate-garbage", "deflate-bomb")


# A valid dataset sent on a context of another syntax (issue 22 row 3): Explicit VR bytes
# on an Implicit VR context and the reverse, or Implicit VR bytes deflated. Drawn from
# the CT bases, whose class is offered in every syntax.
MISLABELLED = "mislabelled"


def mislabelled_bases() -> list[Base]:
    """The bases whose SOP class has a context in each syntax (see cases.contexts)."""
    return [b for b in bases() if b.sop_class == bases()[0].sop_class]


def make_dataset(kind: str, rng: random.Random, base: Base, uid: str) -> tuple[bytes, str]:
    """The bytes of one case's dataset and the transfer syntax they are said to be in."""
    body = base.body.replace(PLACEHOLDER.encode(), uid.encode())
    implicit = base.transfer_syntax == IMPLICIT_LE
    if kind == MISLABELLED:
        if implicit and rng.random() < 0.5:
            return deflate(body), DEFLATED_LE
        return body, EXPLICIT_LE if implicit else IMPLICIT_LE
    if kind in MUTATIONS:
        return MUTATIONS[kind](rng, body, base_index(base), implicit), base.transfer_syntax
    # Deflate kinds always start from an Explicit VR Little Endian base.
    if kind == "deflate-bomb":
        return deflate_bomb(body), DEFLATED_LE
    if kind == "deflate-inner":
        inner = rng.choice([k for k in MUTATIONS if k != "valid"])
        body = MUTATIONS[inner](rng, body, base_index(base), False)
    packed = deflate(body)
    if kind == "deflate-bit-flip":
        packed = m_bit_flip(rng, packed, [], False)
    elif kind == "deflate-truncate":
        packed = packed[: rng.randrange(len(packed))]
    elif kind == "deflate-garbage":
        packed = rng.randbytes(rng.randrange(16, 4096))
    return packed, DEFLATED_LE


def explicit_bases() -> list[Base]:
    """The bases in Explicit VR Little Endian (what deflate kinds start from)."""
    return [b for b in bases() if b.transfer_syntax == EXPLICIT_LE]
