"""Reading what the router needs from a received file, and rewriting it for `modify`.

Only the header is parsed, and only as far as the highest tag anything needs: the
identity elements up to Series Instance UID (0020,000E) always, further only when a rule's
`tags` or a path template asks. Pixel data is never decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from router.config import ModifySpec
from router.errors import CannotUnderstand
from router.rules import TagValues

IDENTITY_END = 0x0020000E  # Series Instance UID: everything `trace` and the log need
PIXEL_DATA = 0x7FE00010


def tags_up_to(keywords: Iterable[str]) -> int:
    """The highest tag to read so that `keywords` and the identity elements are present."""
    return max([IDENTITY_END, *(keyword_dict[k] for k in keywords)])


def read_header(path: Path, up_to: int = IDENTITY_END) -> Dataset:
    """Parse the file meta and the dataset up to tag `up_to` (never past pixel data)."""
    last = min(up_to, PIXEL_DATA - 1)

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last

    try:
        with path.open("rb") as fp:
            ds = read_partial(fp, stop_when=stop, defer_size=4096)
            # pydicom parses lazily: force the values we read to surface errors here.
            for elem in ds.iterall():
                _ = elem.value
    except Exception as exc:  # pydicom raises many types for a corrupt stream
        raise CannotUnderstand(f"cannot parse the dataset: {exc}") from exc
    return ds


def element(ds: Dataset, keyword: str) -> DataElement | None:
    """The element named `keyword`, or None (pydicom's `get` returns values, not elements)."""
    return ds[keyword] if keyword in ds else None  # noqa: SIM401


def text_values(elem: DataElement | None) -> TagValues | None:
    """An element's value as text items; None when missing, () when empty."""
    if elem is None:
        return None
    value = elem.value
    if value is None or value == "" or value == b"":
        return ()
    if elem.VR == "SQ" or isinstance(value, bytes | bytearray):
        return None  # sequences and binary values are not matched as text
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return tuple(str(v).strip() for v in items)


def tag_values(ds: Dataset, keywords: Iterable[str]) -> Mapping[str, TagValues]:
    """The present elements among `keywords`, as text."""
    out: dict[str, TagValues] = {}
    for keyword in keywords:
        values = text_values(element(ds, keyword))
        if values is not None:
            out[keyword] = values
    return out


def apply_modify(source: Path, spec: ModifySpec, target: Path) -> None:
    """Write `source` with `spec`'s removals and settings applied to `target`."""
    try:
        ds = dcmread(source, defer_size="1 MB")
    except Exception as exc:
        raise CannotUnderstand(f"cannot parse the dataset to modify it: {exc}") from exc
    for name in spec.remove:
        if name == "private":
            ds.remove_private_tags()
        elif name in ds:
            del ds[name]
    for keyword, value in spec.set.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
