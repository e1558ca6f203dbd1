"""The bytes of a received file's dataset, as the walk (`router.dicom.walk`) reads them.

Both sources show the walk one window, `buf`, starting at stream offset `base`, with the
read position `pos`; the walk reads element headers straight from the window and calls
`take` only when one crosses its end. `Plain` reads a file in 64 KiB windows, and a skip
costs no I/O. `Inflated` inflates a deflated dataset in bounded chunks, and refuses one
inflating beyond `INFLATE_FLOOR` to more than `INFLATE_RATIO` times its compressed size:
a decompression bomb (`InflateLimit`, 0xC212).
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

from router.dicom.tags import tag_text
from router.errors import InflateLimit, InvalidStructure

INFLATE_FLOOR = 64 * 2**20  # any deflated dataset may inflate to this
INFLATE_RATIO = 100  # beyond the floor, at most this many times its compressed size
TRAILER = 8  # bytes after the deflate stream's end that are tolerated
CHUNK = 64 * 1024


class Plain:
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
            raise InvalidStructure(f"{tag_text(tag)} of {n} bytes at {self.pos} runs past the end")
        self.pos += n

    def value(self, n: int, tag: int) -> bytes:
        """Consume and return `n` value bytes of `tag`."""
        if self.pos + n > self.size:
            raise InvalidStructure(f"{tag_text(tag)} of {n} bytes at {self.pos} runs past the end")
        i = self.take(n)
        return self.buf[i : i + n]

    def at_end(self) -> bool:
        """True when every byte was consumed."""
        return self.pos >= self.size


class Inflated:
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
            raise InvalidStructure(f"{tag_text(tag)} of {n} bytes runs past the end") from None
        return self.buf[i : i + n]

    def skip(self, n: int, tag: int) -> None:
        """Consume `n` value bytes of `tag`, inflating (and dropping) them now."""
        self.pos += n
        while self.base + len(self.buf) < self.pos:
            chunk = self._more()
            if not chunk:
                raise InvalidStructure(f"{tag_text(tag)} of {n} bytes runs past the end")
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


Stream = Plain | Inflated
