"""The fuzz suite's judge of "structurally invalid", independent of the router's code.

A strict walk of the encoded dataset (PS3.5 §7): every element header complete, every
explicit VR a known one, every defined length inside its container, undefined length
only on SQ (and on UN, whose value is then an Implicit VR sequence, PS3.5 §6.2.2),
sequences made of items only, every item and undefined-length sequence closed by its
delimiter, tags strictly ascending in each dataset (§7.1: ordered, at most once), and the
stream ending exactly at the end of the last element. Deflated streams must inflate
completely with nothing after them. Values are not judged: a flipped bit in a name is
still a valid dataset.

Why not pydicom: `dcmread` stops silently when fewer than 8 bytes of an element header
are left, so a dataset cut inside a header reads as a shorter valid one. DCMTK's
`dcmdump -E` would be a separate process per case, too slow for 1,000 cases in CI.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

# PS3.5 Table 6.2-1; the long ones have a reserved field and a 4-byte length (§7.1.2).
VRS = frozenset(
    ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
     "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
     "UR", "US", "UT", "UV")
)
LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"))
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
MAX_INFLATED = 1 << 30


@dataclass
class _Frame:
    kind: str  # "ds": a dataset (top level or an item's); "sq": a sequence's items
    end: int | None  # None: undefined length, closed by a delimiter
    implicit: bool
    limit: int  # the innermost defined end: nothing inside may pass it
    last_tag: int = -1


def _implicit_vr(tag: int) -> str:
    if tag >> 16 & 1:  # private: unknown VR
        return "UN"
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def inflate(data: bytes) -> bytes | str:
    """A deflated dataset inflated, or why it does not inflate cleanly."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error:
        return "inflate-error"
    if not inflater.eof:
        return "inflate-truncated" if not inflater.unconsumed_tail else "inflate-too-big"
    if inflater.unused_data:
        return "inflate-trailing-bytes"
    return out


def invalid_reason(data: bytes, transfer_syntax: str) -> str | None:
    """None when `data` is a structurally valid dataset in `transfer_syntax`, else why not."""
    if transfer_syntax == DEFLATED_LE:
        inflated = inflate(data)
        if isinstance(inflated, str):
            return inflated
        data, transfer_syntax = inflated, EXPLICIT_LE
    return _walk(data, implicit=transfer_syntax == IMPLICIT_LE)


def _walk(buf: bytes, implicit: bool) -> str | None:
    frames = [_Frame("ds", len(buf), implicit, len(buf))]
    pos = 0
    while frames:
        top = frames[-1]
        if top.end is not None and pos == top.end:
            frames.pop()
            continue
        limit = top.limit
        if pos + 8 > limit:
            return "truncated-header" if limit == len(buf) else "header-overruns-container"
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if top.kind == "sq":
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            pos += 8
            if tag == SEQUENCE_END and top.end is None:
                if length:
                    return "delimiter-with-length"
                frames.pop()
            elif tag == ITEM:
                end = None if length == UNDEFINED else pos + length
                if end is not None and end > limit:
                    return "item-overruns-container"
                frames.append(_Frame("ds", end, top.implicit, limit if end is None else end))
            else:
                return "non-item-in-sequence"
            continue
        if tag == ITEM_END:
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            if top.end is not None or length:
                return "stray-item-delimiter"
            pos += 8
            frames.pop()
            continue
        if group == 0xFFFE:
            return "delimiter-in-dataset"
        if tag <= top.last_tag:
            return "tag-out-of-order"
        top.last_tag = tag
        if top.implicit:
            vr = _implicit_vr(tag)
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            pos += 8
        else:
            vr = buf[pos + 4 : pos + 6].decode("latin-1")
            if vr not in VRS:
                return "unknown-vr"
            if vr in LONG_VRS:
                if pos + 12 > limit:
                    return "truncated-header"
                (length,) = struct.unpack_from("<I", buf, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", buf, pos + 6)
                pos += 8
        if length == UNDEFINED:
            if vr not in ("SQ", "UN"):
                return "undefined-length-not-sq"
            frames.append(_Frame("sq", None, top.implicit or vr == "UN", limit))
            continue
        if pos + length > limit:
            return "value-overruns-container"
        if vr == "SQ":
            frames.append(_Frame("sq", pos + length, top.implicit, pos + length))
        else:
            pos += length
    return None if pos == len(buf) else "trailing-bytes"
