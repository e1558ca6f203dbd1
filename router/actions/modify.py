"""`modify`: rewrite an instance's header, copy its pixel data as raw bytes.

Memory stays flat whatever the instance size (design §7): pydicom parses and rewrites
only the elements before Pixel Data (7FE0,0010), those the edit leaves undecoded written
back as their raw bytes (router.dicom.rawwrite); the Pixel Data element, native or
encapsulated, is copied from the received file in chunks without being parsed, and what
follows it (normally nothing, or a small trailing padding, signature or private block)
is parsed and rewritten only when it is small. The slow path (the whole dataset through
pydicom, as large as the instance) is taken when the change touches Pixel Data itself,
for the deflated transfer syntax (the dataset is one zlib stream), and when more than
TAIL_LIMIT bytes follow the pixel data.

Group lengths: pydicom writes no (retired, PS3.5 7.2) group length elements (gggg,0000)
outside the file meta, so every rewritten part loses them and none can go stale; the
file meta's (0002,0000) is recomputed. A tail copied raw keeps its own, still true.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike, DicomIO
from pydicom.filereader import read_dataset, read_file_meta_info, read_partial
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from router.config.actions import ModifySpec
from router.dicom.rawwrite import write_part10
from router.dicom.tags import ITEM, LONG_VRS, PIXEL_DATA, SEQUENCE_END, UNDEFINED_LENGTH
from router.dicom.walk import transfer_syntax
from router.errors import CannotUnderstand, InvalidStructure, OutOfResources

CHUNK = 1 << 20  # the copy's buffer: all the memory a gigabyte of pixel data costs
TAIL_LIMIT = 16 << 20  # elements after Pixel Data above this take the slow path

_T = TypeVar("_T")


# An edit of a dataset part: the header (True), the elements after Pixel Data (False) or
# the whole dataset (None); it changes the part in place and says whether it did.
Edit = Callable[[Dataset, bool | None], bool]


def apply_modify(source: Path, spec: ModifySpec, target: Path) -> None:
    """Write `source` with `spec`'s removals and settings applied to `target`."""

    def edit(ds: Dataset, side: bool | None) -> bool:
        return _apply(ds, spec, below_pixel_data=side)

    rewrite(source, target, edit, streamable=not touches_pixel_data(spec))


def apply_in_memory(ds: Dataset, spec: ModifySpec) -> bool:
    """`spec` applied to a whole dataset in memory (`explain`'s view); True when it changed."""
    return _apply(ds, spec)


def rewrite(source: Path, target: Path, edit: Edit, *, streamable: bool = True) -> None:
    """Write `source` to `target` with `edit` applied, Pixel Data copied raw when `streamable`."""
    try:
        try:
            if not (streamable and _streamed(source, edit, target)):
                _whole(source, edit, target)
        except OSError as exc:
            if _is_read_error(exc, source):
                raise CannotUnderstand(f"cannot read the instance to modify it: {exc}") from exc
            raise OutOfResources(
                f"cannot write the modified instance: {exc.strerror or exc}"
            ) from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _is_read_error(exc: OSError, source: Path) -> bool:
    return exc.filename is not None and Path(exc.filename) == source


def touches_pixel_data(spec: ModifySpec) -> bool:
    """True when `spec` removes or sets Pixel Data itself (always the slow path)."""
    return any(_tag(k) == PIXEL_DATA for k in [*spec.remove, *spec.set])


def _tag(name: str) -> int | None:
    return None if name == "private" else tag_for_keyword(name)


def _streamed(source: Path, edit: Edit, target: Path) -> bool:
    """The flat-memory rewrite; False when the slow path must do it instead."""
    with source.open("rb") as fp:
        # Checked first: pydicom would inflate a deflated dataset whole into memory.
        try:
            syntax = transfer_syntax(fp)  # from the meta's bytes: no dataset built twice
        except InvalidStructure:  # not the usual meta: pydicom reads it (or says why not)
            syntax = _parsed(lambda: read_file_meta_info(source)).get("TransferSyntaxUID")
        if syntax == DeflatedExplicitVRLittleEndian:
            return False
        fp.seek(0)
        header = _parsed(lambda: read_partial(fp, stop_when=_at_pixel_data))
        implicit, little = bool(header.is_implicit_VR), bool(header.is_little_endian)
        pixel_start = fp.tell()
        size = fp.seek(0, 2)
        pixel_end = _element_end(fp, pixel_start, size, implicit=implicit, little=little)
        if size - pixel_end > TAIL_LIMIT:
            return False
        fp.seek(pixel_end)
        tail_bytes = fp.read()
        tail = _parse_tail(tail_bytes, implicit=implicit, little=little)
        edit(header, True)
        tail_changed = edit(tail, False)
        with target.open("wb") as out:
            write_part10(out, header)  # what dcmwrite writes, raw elements in one go
            fp.seek(pixel_start)
            _copy(fp, out, pixel_end - pixel_start)
            if tail_changed:
                charset = header.get("SpecificCharacterSet", "iso8859")
                write_dataset(_encoder(out, implicit=implicit, little=little), tail, charset)
            else:
                out.write(tail_bytes)
    return True


def _parsed(read: Callable[[], _T]) -> _T:
    """What pydicom's `read` returns; any error it raises for a corrupt stream: CannotUnderstand.

    pydicom raises many types for those. An OSError is no parse failure: it goes up to
    `apply_modify`, which tells a failed read (CannotUnderstand) from a failed write.
    """
    try:
        return read()
    except Exception as exc:
        if isinstance(exc, OSError):
            raise
        raise CannotUnderstand(f"cannot parse the dataset to modify it: {exc}") from exc


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= PIXEL_DATA


def _element_end(fp: BinaryIO, start: int, size: int, *, implicit: bool, little: bool) -> int:
    """Where the top-level element at `start` (Pixel Data, or whatever follows it) ends."""
    fp.seek(start)
    head = fp.read(8)
    if len(head) < 8:
        return start  # no element here: nothing at or after Pixel Data
    order = "<" if little else ">"
    group, elem = struct.unpack(f"{order}HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA:
        return start  # no Pixel Data: what follows is the tail
    if implicit:
        (length,) = struct.unpack(f"{order}I", head[4:])
        value = start + 8
    elif head[4:6] in LONG_VRS:
        (length,) = struct.unpack(f"{order}I", fp.read(4))
        value = start + 12
    else:
        (length,) = struct.unpack(f"{order}H", head[6:])
        value = start + 8
    end = _items_end(fp, value, size, order) if length == UNDEFINED_LENGTH else value + length
    if end > size:
        raise CannotUnderstand("cannot parse the dataset to modify it: Pixel Data is truncated")
    return end


def _items_end(fp: BinaryIO, offset: int, size: int, order: str) -> int:
    """Walk encapsulated fragments (item headers only) to the sequence delimiter's end."""
    while offset + 8 <= size:
        fp.seek(offset)
        group, elem, length = struct.unpack(f"{order}HHI", fp.read(8))
        tag = group << 16 | elem
        if tag == SEQUENCE_END:
            return offset + 8
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise CannotUnderstand(
                f"cannot parse the dataset to modify it: ({group:04X},{elem:04X}) in"
                " encapsulated Pixel Data"
            )
        offset += 8 + length
    raise CannotUnderstand("cannot parse the dataset to modify it: Pixel Data is truncated")


def _parse_tail(data: bytes, *, implicit: bool, little: bool) -> Dataset:
    if not data:
        return Dataset()
    try:
        return read_dataset(BytesIO(data), implicit, little)
    except Exception as exc:
        raise CannotUnderstand(f"cannot parse the elements after Pixel Data: {exc}") from exc


def _apply(ds: Dataset, spec: ModifySpec, *, below_pixel_data: bool | None = None) -> bool:
    """Apply `spec`'s removals, then its settings, to `ds`; True when `ds` changed.

    `below_pixel_data` True or False: only the keywords on that side of Pixel Data (the
    streamed path rewrites each side apart); None: all of them (the whole dataset).
    """

    def here(keyword: str) -> bool:
        tag = _tag(keyword)
        if tag is None:
            return False
        return below_pixel_data is None or (tag < PIXEL_DATA) == below_pixel_data

    tags = set(ds.keys())
    if "private" in spec.remove:
        ds.remove_private_tags()
    for name in spec.remove:
        if here(name) and name in ds:
            del ds[name]
    settings = {k: v for k, v in spec.set.items() if here(k)}
    for keyword, value in settings.items():
        setattr(ds, keyword, value)
    return bool(settings) or set(ds.keys()) != tags


def _encoder(fp: BinaryIO | DicomBytesIO, *, implicit: bool, little: bool) -> DicomIO:
    out = fp if isinstance(fp, DicomBytesIO) else DicomFileLike(fp)
    out.is_implicit_VR = implicit
    out.is_little_endian = little
    return out


def _copy(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    for chunk in _chunks(src, count):
        dst.write(chunk)


def _chunks(src: BinaryIO, count: int) -> Iterator[bytes]:
    while count > 0:
        chunk = src.read(min(CHUNK, count))
        if not chunk:
            raise CannotUnderstand("cannot modify: the instance was truncated while copying")
        count -= len(chunk)
        yield chunk


def _whole(source: Path, edit: Edit, target: Path) -> None:
    """The slow path: the whole dataset through pydicom (memory grows with the instance)."""
    ds: FileDataset = _parsed(lambda: dcmread(source))
    edit(ds, None)
    ds.save_as(target, enforce_file_format=True)
