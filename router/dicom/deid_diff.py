"""What a de-identification changed: each attribute before and after, for `explain`.

Pure: it compares two datasets (the original and the transform's output, computed on a
copy in memory) at every depth of nested sequences and in the file meta, and renders each
difference on one line, long values cut, binary values as their length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

MAX_SHOWN = 64  # characters of a value shown before it is cut (a whole UID fits)
ABSENT, REMOVED, EMPTY, EMPTIED = "absent", "removed", "empty", "emptied"


@dataclass(frozen=True)
class Change:
    """One attribute that differs: where it is, and its value before and after."""

    path: str  # keyword (or tag) with its sequence items, e.g. ReferencedImageSequence[0].X
    tag: int
    before: str
    after: str

    def line(self) -> str:
        """`PATH (gggg,eeee)  BEFORE -> AFTER`."""
        return f"{self.path} {_tag(self.tag)}  {self.before} -> {self.after}"


def changes(before: Dataset, after: Dataset) -> list[Change]:
    """Every attribute `after` differs from `before` in (the file meta first)."""
    meta_before = getattr(before, "file_meta", None) or Dataset()
    meta_after = getattr(after, "file_meta", None) or Dataset()
    return [*_walk(meta_before, meta_after, ""), *_walk(before, after, "")]


def _walk(before: Dataset, after: Dataset, prefix: str) -> Iterator[Change]:
    for tag in sorted(set(before.keys()) | set(after.keys())):
        old = before.get(tag)
        new = after.get(tag)
        elem = old if old is not None else new
        assert elem is not None
        path = prefix + (elem.keyword or _tag(int(tag)))
        if old is not None and new is not None and old.VR == new.VR == "SQ":
            yield from _items(old, new, path)
            continue
        if old is None:
            yield Change(path, int(tag), ABSENT, _shown(new))
        elif new is None:
            yield Change(path, int(tag), _shown(old), REMOVED)
        elif old.value != new.value:
            shown = _shown(new)
            yield Change(path, int(tag), _shown(old), EMPTIED if shown == EMPTY else shown)


def _items(old: DataElement, new: DataElement, path: str) -> Iterator[Change]:
    if len(old.value) and not len(new.value):
        yield Change(path, int(old.tag), f"{len(old.value)} item(s)", EMPTIED)
        return
    for i, (a, b) in enumerate(zip(old.value, new.value, strict=False)):
        yield from _walk(a, b, f"{path}[{i}].")
    if len(old.value) != len(new.value):
        yield Change(path, int(old.tag), f"{len(old.value)} item(s)", f"{len(new.value)} item(s)")


def _shown(elem: DataElement | None) -> str:
    """An element's value on one line: quoted, cut at MAX_SHOWN; empty and binary named."""
    if elem is None:
        return ABSENT
    value = elem.value
    if value is None or value == "" or value == b"" or value == []:
        return EMPTY
    if elem.VR == "SQ":
        return f"{len(value)} item(s)"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    many = isinstance(value, MultiValue | list)
    text = "\\".join(str(v) for v in value) if many else str(value)
    if len(text) > MAX_SHOWN:
        text = text[: MAX_SHOWN - 3] + "..."
    return repr(text)


def _tag(tag: int) -> str:
    return f"({Tag(tag).group:04X},{Tag(tag).element:04X})"
