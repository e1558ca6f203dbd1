"""A structural walk of a received Part-10 file, before anything is answered.

It checks what a receiver needs to parse the dataset at all, without decoding a value:
tags ascend in every dataset, every length stays inside its stream, item and sequence,
defined or undefined length, are closed where they say, and encapsulated fragments end
with a sequence delimiter. Values (pixel data too) are skipped by their length, so a
plain file costs a few reads of its first 64 KiB and a deflated one a streamed inflate
in bounded chunks, whatever its size.

Handles the file meta (explicit VR LE), Implicit VR LE, Explicit VR LE and Big Endian,
Deflated Explicit VR LE and every encapsulated syntax (structure only). The dataset must
be in the syntax the file meta names (the presentation context's, for a received file):
bytes of the other explicitness, or an element whose VR is no known one, are refused
rather than read the way pydicom guesses, since the stored file keeps that meta and DCMTK
(and a PACS) reads it by it.

A deflated dataset may inflate beyond `INFLATE_FLOOR` only up to `INFLATE_RATIO` times
its compressed size: past that it is a decompression bomb (`InflateLimit`, 0xC212). The
byte sources, plain and inflated, are in `router.dicom.streams`.

On the way it keeps the raw values of the top-level elements asked for (`collect`) and of
the file meta: the router's header is built from them (`router.dicom.header`), so no file is
parsed twice and a deflated one is never inflated whole in memory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from router.dicom.streams import CHUNK, Inflated, Plain, Stream
from router.dicom.tags import (
    ITEM,
    ITEM_END,
    LONG_VRS,
    PIXEL_DATA,
    SEQUENCE_END,
    SHORT_VRS,
    TRANSFER_SYNTAX_UID,
    UNDEFINED_LENGTH,
    tag_text,
)
from router.errors import InvalidStructure

COLLECT_LIMIT = 2**20  # a collected value longer than this is refused, not read into memory
MAX_DEPTH = 32  # nested sequences; deeper is a stack bomb, not a real dataset
VRS = SHORT_VRS | LONG_VRS  # every explicit VR; bytes of any other pair are no VR


# One element as read: its VR (None when implicit), its value bytes, and whether its
# dataset is Implicit VR.
Raw = tuple[str | None, bytes, bool]


@dataclass(frozen=True)
class Walked:
    """What the walk learnt: the syntax, where the dataset starts, its (inflated) size."""

    transfer_syntax: str
    dataset_offset: int
    dataset_bytes: int
    elements: dict[int, Raw] = field(default_factory=dict)  # the `collect` tags present
    meta: dict[int, Raw] = field(default_factory=dict)  # the file meta (group 0002)


@lru_cache(maxsize=4096)
def _implicit_is_sq(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


class _Walker:
    """The grammar of PS3.5 chapter 7, over one stream."""

    def __init__(self, s: Stream, big: bool, collect: Collection[int]) -> None:
        self.s = s
        self.tag = struct.Struct(">HH" if big else "<HH")
        self.u32 = struct.Struct(">I" if big else "<I")
        self.u16 = struct.Struct(">H" if big else "<H")
        self.item = struct.Struct(">HHI" if big else "<HHI")  # tag + 4-byte length
        self.collect = collect
        self.elements: dict[int, Raw] = {}

    def dataset(self, end: int | None, depth: int, implicit: bool, top: bool = False) -> None:
        """Walk elements up to `end`, to an item delimiter (None), or the stream's end (top)."""
        # The hot loop of every C-STORE (~250 elements in a real CT): locals, no calls
        # while an element header lies inside the window.
        s, prev = self.s, -1
        want = self.collect if top else ()
        u16, u32 = self.u16.unpack_from, self.u32.unpack_from
        while True:
            pos = s.pos
            if end is not None and pos >= end:
                return  # callers check overruns
            i = pos - s.base
            buf = s.buf
            if i + 12 <= len(buf):
                s.pos = pos + 8
            else:
                if end is None and i >= len(buf) and s.at_end():
                    if top:
                        return
                    raise InvalidStructure("an item of undefined length is never closed")
                i = s.take(8)
                buf = s.buf
            group, elem = self.tag.unpack_from(buf, i)
            tag = group << 16 | elem
            if group == 0xFFFE:
                if tag == ITEM_END and end is None and not top:
                    if u32(buf, i + 4)[0]:  # PS3.5 7.5.2: a delimiter's length is 0
                        raise InvalidStructure(f"item delimiter at {pos} has a length")
                    return
                raise InvalidStructure(f"item tag {tag_text(tag)} inside a dataset at {pos}")
            if tag <= prev:
                raise InvalidStructure(
                    f"tag {tag_text(tag)} at {pos} does not ascend from {tag_text(prev)}"
                )
            if prev < 0 and (buf[i + 4 : i + 6] in VRS) == implicit:
                # The first element tells a mislabelled syntax (pydicom peeks the same
                # way, and then reads the other way): refused, because the file would be
                # stored and forwarded with a meta that misstates its encoding.
                raise InvalidStructure(_mislabelled(implicit, tag, pos))
            prev = tag
            if implicit:
                vr = b""
                (length,) = u32(buf, i + 4)
            else:
                vr = buf[i + 4 : i + 6]
                if vr in LONG_VRS:
                    if s.pos - s.base + 4 <= len(s.buf):
                        (length,) = u32(s.buf, s.pos - s.base)
                        s.pos += 4
                    else:
                        (length,) = u32(s.buf, s.take(4))
                elif vr in SHORT_VRS:
                    (length,) = u16(buf, i + 6)
                else:
                    # pydicom guesses a 2-byte length for an unknown VR, the standard (PS3.5
                    # 7.1.2) a 4-byte one for VRs to come; and it reads bytes that are no VR
                    # as an implicit element amid explicit ones, where DCMTK reads garbage.
                    # A guess is no structure to acknowledge.
                    raise InvalidStructure(f"{tag_text(tag)} at {pos} has no known VR {vr!r}")
            if vr == b"SQ":
                self.sequence(length, depth + 1, implicit, tag)
            elif length == UNDEFINED_LENGTH:
                if vr == b"UN":
                    self.sequence(length, depth + 1, True, tag)  # PS3.5 6.2.2: UN is implicit
                elif not vr and tag != PIXEL_DATA:
                    self.sequence(length, depth + 1, implicit, tag)
                elif vr in (b"OB", b"OW", b""):
                    self.fragments(tag)
                else:
                    raise InvalidStructure(f"{tag_text(tag)} {vr.decode()} has undefined length")
            elif not vr and _implicit_is_sq(tag):
                self.sequence(length, depth + 1, implicit, tag)
            elif tag in want:
                if length > COLLECT_LIMIT:
                    raise InvalidStructure(f"{tag_text(tag)} of {length} bytes is too long to read")
                self.elements[tag] = (vr.decode() or None, s.value(length, tag), implicit)
            else:
                s.skip(length, tag)
            if end is not None and s.pos > end:
                raise InvalidStructure(f"{tag_text(tag)} at {pos} overruns its item")

    def sequence(self, length: int, depth: int, implicit: bool, tag: int) -> None:
        """Walk the items of a sequence of defined or undefined length."""
        if depth > MAX_DEPTH:
            raise InvalidStructure(f"sequences nested deeper than {MAX_DEPTH}")
        s = self.s
        end = None if length == UNDEFINED_LENGTH else s.pos + length
        while True:
            if end is not None and s.pos >= end:
                if s.pos > end:
                    raise InvalidStructure(f"sequence {tag_text(tag)} overruns its length")
                return
            if end is None and s.at_end():
                raise InvalidStructure(f"sequence {tag_text(tag)} is never closed")
            at = s.pos
            i = s.take(8)
            group, elem, ilen = self.item.unpack_from(s.buf, i)
            item = group << 16 | elem
            if item == SEQUENCE_END and end is None:
                if ilen:  # PS3.5 7.5.2: a delimiter's length is 0
                    raise InvalidStructure(f"sequence delimiter at {at} has a length")
                return
            if item != ITEM:
                raise InvalidStructure(
                    f"sequence {tag_text(tag)} not closed: {tag_text(item)} at {at}"
                )
            item_end = None if ilen == UNDEFINED_LENGTH else s.pos + ilen
            self.dataset(item_end, depth, implicit)
            if item_end is not None and s.pos > item_end:
                raise InvalidStructure(f"item of {tag_text(tag)} at {at} overruns its length")

    def fragments(self, tag: int) -> None:
        """Skip an encapsulated value: offset table and fragments, then the delimiter."""
        s = self.s
        while True:
            if s.at_end():
                raise InvalidStructure(f"fragments of {tag_text(tag)} are never terminated")
            at = s.pos
            i = s.take(8)
            group, elem, flen = self.item.unpack_from(s.buf, i)
            item = group << 16 | elem
            if item == SEQUENCE_END:
                return
            if item != ITEM or flen == UNDEFINED_LENGTH:
                raise InvalidStructure(f"fragments of {tag_text(tag)} not terminated at {at}")
            s.skip(flen, tag)


def _mislabelled(implicit: bool, tag: int, pos: int) -> str:
    found, said = ("Explicit", "Implicit") if implicit else ("Implicit", "Explicit")
    return (
        f"dataset encoded in {found} VR (first element {tag_text(tag)} at {pos}) where"
        f" the transfer syntax says {said} VR"
    )


def _meta(fp: BinaryIO) -> tuple[str, int, bytes, dict[int, Raw]]:
    """Check the preamble and file meta: the syntax, dataset offset, bytes read, elements."""
    head = fp.read(CHUNK)  # the file meta is a few hundred bytes
    if len(head) < 132 or head[128:132] != b"DICM":
        raise InvalidStructure("no DICM prefix after the 128-byte preamble")
    pos, elements = 132, dict[int, Raw]()
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 2:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(head):
                raise InvalidStructure("file meta ends inside an element header")
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12
        elif vr in SHORT_VRS:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        else:
            raise InvalidStructure(f"unknown VR {vr!r} in the file meta")
        if length == UNDEFINED_LENGTH or pos + length > len(head):
            raise InvalidStructure(f"file meta element (0002,{elem:04X}) too long")
        elements[0x00020000 | elem] = (vr.decode(), head[pos : pos + length], False)
        pos += length
    if TRANSFER_SYNTAX_UID not in elements:
        raise InvalidStructure("no Transfer Syntax UID in the file meta")
    ts = elements[TRANSFER_SYNTAX_UID][1].rstrip(b"\0 ").decode("ascii", "replace")
    return ts, pos, head, elements


def transfer_syntax(fp: BinaryIO) -> str:
    """The Transfer Syntax UID of the Part 10 file at `fp`'s start, read from the meta's
    bytes (no dataset built); InvalidStructure when its meta cannot be read so."""
    return _meta(fp)[0]


def walk(path: Path, collect: Collection[int] = ()) -> Walked:
    """Walk a Part-10 file's structure; raise InvalidStructure or InflateLimit.

    The raw values of the top-level elements whose tags are in `collect` are kept
    (`Walked.elements`), each up to `COLLECT_LIMIT` bytes.
    """
    try:
        with path.open("rb") as fp:
            ts, offset, first, meta = _meta(fp)
            size = os.fstat(fp.fileno()).st_size - offset
            stream: Stream
            if ts == DeflatedExplicitVRLittleEndian:
                fp.seek(offset)
                stream = Inflated(fp, size)
            else:
                stream = Plain(fp, offset, size, first[offset:])
            walker = _Walker(stream, ts == ExplicitVRBigEndian, collect)
            walker.dataset(None, 0, ts == ImplicitVRLittleEndian, top=True)
    except OSError as exc:
        raise InvalidStructure(f"cannot read the received file: {exc.strerror}") from exc
    except struct.error as exc:  # a window shorter than an element header: truncated
        raise InvalidStructure(f"dataset truncated: {exc}") from exc
    if isinstance(stream, Inflated):
        size = stream.produced
    return Walked(ts, offset, size, walker.elements, meta)
