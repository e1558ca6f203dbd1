"""A structural walk of a received Part-10 file, before anything is answered.

It checks what a receiver needs to parse the dataset at all, without decoding a value:
tags ascend in every dataset, every length stays inside its stream, item and sequence,
defined or undefined length, are closed where they say, and encapsulated fragments end
with a sequence delimiter. Values (pixel data too) are skipped by their length, so a
plain file costs a few reads of its first 64 KiB and a deflated one a streamed inflate
in bounded chunks, whatever its size.

Handles the file meta (explicit VR LE), Implicit VR LE, Explicit VR LE and Big Endian,
Deflated Explicit VR LE and every encapsulated syntax (structure only). A deflated
dataset may inflate beyond `INFLATE_FLOOR` only up to `INFLATE_RATIO` times its
compressed size: past that it is a decompression bomb (`InflateLimit`, 0xC212).

On the way it keeps the raw values of the top-level elements asked for (`collect`) and of
the file meta: the router's header is built from them (`router.dicom.header`), so no file is
parsed twice and a deflated one is never inflated whole in memory.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

from router.errors import InflateLimit, InvalidStructure

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

INFLATE_FLOOR = 64 * 2**20  # any deflated dataset may inflate to this
INFLATE_RATIO = 100  # beyond the floor, at most this many times its compressed size
COLLECT_LIMIT = 2**20  # a collected value longer than this is refused, not read into memory
TRAILER = 8  # bytes after the deflate stream's end that are tolerated
MAX_DEPTH = 32  # nested sequences; deeper is a stack bomb, not a real dataset

CHUNK = 64 * 1024
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())


# One element as read: its VR (None when implicit), its value bytes, and whether its
# dataset is Implicit VR (a writer may mislabel the file's syntax).
Raw = tuple[str | None, bytes, bool]


@dataclass(frozen=True)
class Walked:
    """What the walk learnt: the syntax, where the dataset starts, its (inflated) size."""

    transfer_syntax: str
    dataset_offset: int
    dataset_bytes: int
    elements: dict[int, Raw] = field(default_factory=dict)  # the `collect` tags present
    meta: dict[int, Raw] = field(default_factory=dict)  # the file meta (group 0002)


def _t(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Plain:
    """The dataset bytes of a file, read in 64 KiB windows; skipping costs no I/O."""

    def __init__(self, fp: BinaryIO, offset: int, size: int, first: bytes) -> None:
        self._fp, self._offset, self.size = fp, offset, size
        self.buf, self.base, self.pos = first, 0, 0  # `first`: what was read after the meta

    def take(self, n: int) -> int:
        """Consume `n` bytes; return their index in `buf`."""
        i = self.pos - self.base
        if i + n > len(self.buf):
            if self.pos + n > self.size:
                raise InvalidStructure(f"dataset ends inside an element header at {self.pos}")
            self._fp.seek(self._offset + self.pos)
            self.buf, self.base, i = self._fp.read(max(n, CHUNK)), self.pos, 0
        self.pos += n
        return i

    def skip(self, n: int, tag: int) -> None:
        """Consume `n` value bytes of `tag`, which must all be in the stream."""
        if self.pos + n > self.size:
            raise InvalidStructure(f"{_t(tag)} of {n} bytes at {self.pos} runs past the end")
        self.pos += n

    def value(self, n: int, tag: int) -> bytes:
        """Consume and return `n` value bytes of `tag`."""
        if self.pos + n > self.size:
            raise InvalidStructure(f"{_t(tag)} of {n} bytes at {self.pos} runs past the end")
        i = self.take(n)
        return self.buf[i : i + n]

    def at_end(self) -> bool:
        """True when every byte was consumed."""
        return self.pos >= self.size


class _Inflated:
    """The inflated stream of a deflated dataset, produced in bounded chunks.

    Invariant: `pos` never passes the end of the window `buf` (skips inflate through).
    """

    def __init__(self, fp: BinaryIO, compressed: int) -> None:
        self._fp = fp
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self._finished = False
        self._limit = max(INFLATE_FLOOR, INFLATE_RATIO * compressed)
        self._compressed = compressed
        self.produced = 0
        self.buf, self.base, self.pos = b"", 0, 0

    def _more(self) -> bytes:
        """The next inflated chunk (at most CHUNK bytes); b"" at the end of the stream."""
        while not self._finished:
            if self._z.eof:
                # A pad byte, or a gzip trailer some writers leave (8 bytes), is ignored.
                if len(self._z.unused_data) + len(self._fp.read(TRAILER + 1)) > TRAILER:
                    raise InvalidStructure("bytes after the end of the deflated data")
                self._finished = True
                break
            if not self._pending:
                self._pending = self._fp.read(CHUNK)
                if not self._pending:
                    raise InvalidStructure("deflated data ends before its last block")
            try:
                out = self._z.decompress(self._pending, CHUNK)
            except zlib.error as exc:
                raise InvalidStructure(f"deflated data is corrupt: {exc}") from exc
            self._pending = self._z.unconsumed_tail
            if out:
                return self._count(out)
        return b""

    def _count(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.produced > self._limit:
            raise InflateLimit(
                f"deflated dataset of {self._compressed} bytes inflates past {self._limit}"
            )
        return out

    def take(self, n: int) -> int:
        """Consume `n` bytes; return their index in `buf`."""
        i = self.pos - self.base
        if i + n > len(self.buf):
            parts, have = [self.buf[i:]], len(self.buf) - i
            while have < n:
                chunk = self._more()
                if not chunk:
                    raise InvalidStructure(f"dataset ends inside an element header at {self.pos}")
                parts.append(chunk)
                have += len(chunk)
            self.buf, self.base, i = b"".join(parts), self.pos, 0
        self.pos += n
        return i

    def value(self, n: int, tag: int) -> bytes:
        """Consume and return `n` value bytes of `tag`."""
        try:
            i = self.take(n)
        except InvalidStructure:
            raise InvalidStructure(f"{_t(tag)} of {n} bytes runs past the end") from None
        return self.buf[i : i + n]

    def skip(self, n: int, tag: int) -> None:
        """Consume `n` value bytes of `tag`, inflating (and dropping) them now."""
        self.pos += n
        while self.base + len(self.buf) < self.pos:
            chunk = self._more()
            if not chunk:
                raise InvalidStructure(f"{_t(tag)} of {n} bytes runs past the end")
            self.base += len(self.buf)
            self.buf = chunk

    def at_end(self) -> bool:
        """True when the inflated stream has no byte left."""
        if self.pos < self.base + len(self.buf):
            return False
        chunk = self._more()
        if not chunk:
            return True
        self.base += len(self.buf)
        self.buf = chunk
        return False


Stream = _Plain | _Inflated


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
                    return
                raise InvalidStructure(f"item tag {_t(tag)} inside a dataset at {pos}")
            if tag <= prev:
                raise InvalidStructure(f"tag {_t(tag)} at {pos} does not ascend from {_t(prev)}")
            if prev < 0:
                # As pydicom does: a dataset whose first element is encoded in the other
                # explicitness is read that way (some writers mislabel their syntax).
                implicit = not (0x40 < buf[i + 4] < 0x5B and 0x40 < buf[i + 5] < 0x5B)
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
                elif 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B:
                    # pydicom guesses a 2-byte length, the standard (PS3.5 7.1.2) a 4-byte
                    # one for VRs to come: a guess is no structure to acknowledge.
                    raise InvalidStructure(f"unknown VR {vr.decode('ascii')} at {pos}")
                else:
                    # Not a VR: as pydicom does, an implicit element amid explicit ones
                    # (some writers switch inside sequences).
                    vr = b""
                    (length,) = u32(buf, i + 4)
            if vr == b"SQ":
                self.sequence(length, depth + 1, implicit, tag)
            elif length == UNDEFINED:
                if vr == b"UN":
                    self.sequence(length, depth + 1, True, tag)  # PS3.5 6.2.2: UN is implicit
                elif not vr and tag != PIXEL_DATA:
                    self.sequence(length, depth + 1, implicit, tag)
                elif vr in (b"OB", b"OW", b""):
                    self.fragments(tag)
                else:
                    raise InvalidStructure(f"{_t(tag)} {vr.decode()} has undefined length")
            elif not vr and _implicit_is_sq(tag):
                self.sequence(length, depth + 1, implicit, tag)
            elif tag in want:
                if length > COLLECT_LIMIT:
                    raise InvalidStructure(f"{_t(tag)} of {length} bytes is too long to read")
                self.elements[tag] = (vr.decode() or None, s.value(length, tag), implicit)
            else:
                s.skip(length, tag)
            if end is not None and s.pos > end:
                raise InvalidStructure(f"{_t(tag)} at {pos} overruns its item")

    def sequence(self, length: int, depth: int, implicit: bool, tag: int) -> None:
        """Walk the items of a sequence of defined or undefined length."""
        if depth > MAX_DEPTH:
            raise InvalidStructure(f"sequences nested deeper than {MAX_DEPTH}")
        s = self.s
        end = None if length == UNDEFINED else s.pos + length
        while True:
            if end is not None and s.pos >= end:
                if s.pos > end:
                    raise InvalidStructure(f"sequence {_t(tag)} overruns its length")
                return
            if end is None and s.at_end():
                raise InvalidStructure(f"sequence {_t(tag)} is never closed")
            at = s.pos
            i = s.take(8)
            group, elem, ilen = self.item.unpack_from(s.buf, i)
            item = group << 16 | elem
            if item == SEQ_END and end is None:
                return
            if item != ITEM:
                raise InvalidStructure(f"sequence {_t(tag)} not closed: {_t(item)} at {at}")
            item_end = None if ilen == UNDEFINED else s.pos + ilen
            self.dataset(item_end, depth, implicit)
            if item_end is not None and s.pos > item_end:
                raise InvalidStructure(f"item of {_t(tag)} at {at} overruns its length")

    def fragments(self, tag: int) -> None:
        """Skip an encapsulated value: offset table and fragments, then the delimiter."""
        s = self.s
        while True:
            if s.at_end():
                raise InvalidStructure(f"fragments of {_t(tag)} are never terminated")
            at = s.pos
            i = s.take(8)
            group, elem, flen = self.item.unpack_from(s.buf, i)
            item = group << 16 | elem
            if item == SEQ_END:
                return
            if item != ITEM or flen == UNDEFINED:
                raise InvalidStructure(f"fragments of {_t(tag)} not terminated at {at}")
            s.skip(flen, tag)


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
        if length == UNDEFINED or pos + length > len(head):
            raise InvalidStructure(f"file meta element (0002,{elem:04X}) too long")
        elements[0x00020000 | elem] = (vr.decode(), head[pos : pos + length], False)
        pos += length
    if 0x00020010 not in elements:
        raise InvalidStructure("no Transfer Syntax UID in the file meta")
    ts = elements[0x00020010][1].rstrip(b"\0 ").decode("ascii", "replace")
    return ts, pos, head, elements


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
            if ts == DEFLATED:
                fp.seek(offset)
                stream = _Inflated(fp, size)
            else:
                stream = _Plain(fp, offset, size, first[offset:])
            walker = _Walker(stream, ts == EXPLICIT_BE, collect)
            walker.dataset(None, 0, ts == IMPLICIT_LE, top=True)
    except OSError as exc:
        raise InvalidStructure(f"cannot read the received file: {exc.strerror}") from exc
    except struct.error as exc:  # a window shorter than an element header: truncated
        raise InvalidStructure(f"dataset truncated: {exc}") from exc
    if isinstance(stream, _Inflated):
        size = stream.produced
    return Walked(ts, offset, size, walker.elements, meta)
