"""Reading what the router needs from a received file (`modify` is in router.actions.modify).

Only the header is parsed, and only as far as the highest tag anything needs: the
identity elements up to Series Instance UID (0020,000E) always, further only when a rule's
`tags` or a path template asks. Pixel data is never decoded. A received file's structure
is walked first (`router.dicom.walk`), which keeps the raw values of the elements needed: the
header is made of those (pydicom decodes them when read), so the file is read once and a
deflated one is never inflated whole in memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import RE_VALID_UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from router.dicom.tags import PIXEL_DATA, SPECIFIC_CHARACTER_SET, TagValues
from router.dicom.walk import Raw, walk
from router.errors import CannotUnderstand

# Everything the 0xA900 check, the log and `trace` need; Series Instance UID comes last.
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _last_tag(wanted: Collection[str]) -> int:
    return min(max(keyword_dict[k] for k in wanted), PIXEL_DATA - 1)


def read_received(path: Path, keywords: Collection[str] = ()) -> Dataset:
    """Walk a received file's structure (InvalidStructure, InflateLimit), then read its header."""
    wanted = {*IDENTITY, *keywords}
    walked = walk(path, collect=_collected(frozenset(wanted)))
    implicit = walked.transfer_syntax == ImplicitVRLittleEndian
    little = walked.transfer_syntax != ExplicitVRBigEndian
    return _parse(lambda: _header(walked.elements, walked.meta, implicit, little), wanted)


@functools.lru_cache(maxsize=16)
def _collected(wanted: frozenset[str]) -> frozenset[int]:
    tags = (keyword_dict[k] for k in wanted)
    return frozenset({SPECIFIC_CHARACTER_SET, *(t for t in tags if t < PIXEL_DATA)})


def _raw(elements: Mapping[int, Raw], little: bool) -> dict[BaseTag, DataElement | RawDataElement]:
    return {
        BaseTag(tag): RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, little)
        for tag, (vr, value, implicit) in elements.items()
    }


def _header(
    elements: Mapping[int, Raw], meta: Mapping[int, Raw], implicit: bool, little: bool
) -> Dataset:
    # What pydicom's read_dataset makes of the same elements, without reading the file.
    raw = _raw(elements, little)
    ds = Dataset(raw)
    encoding: str | list[str] = default_encoding
    charset = raw.get(BaseTag(SPECIFIC_CHARACTER_SET))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    ds.set_original_encoding(implicit, little, encoding)
    ds.file_meta = FileMetaDataset(_raw(meta, True))
    return ds


def read_header(path: Path, keywords: Collection[str] = ()) -> Dataset:
    """Parse the file meta and the dataset as far as `keywords` and the identity need.

    Only those elements' values are decoded (pydicom decodes lazily), so a corrupt
    element we need raises CannotUnderstand here and one we do not need costs nothing.
    """
    wanted = {*IDENTITY, *keywords}
    last = _last_tag(wanted)

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last

    def read() -> Dataset:
        with path.open("rb") as fp:
            return read_partial(fp, stop_when=stop, defer_size=4096)

    return _parse(read, wanted)


def _parse(read: Callable[[], Dataset], wanted: Collection[str]) -> Dataset:
    try:
        ds = read()
        for keyword in wanted:
            if keyword in ds:
                _ = ds[keyword].value
    except Exception as exc:  # pydicom raises many types for a corrupt stream
        raise CannotUnderstand(f"cannot parse the dataset: {exc}") from exc
    return ds


# What a UID may hold to be taken at all (issue 21 row 11): it names stored files through
# path templates and is forwarded as received, so nothing that is unsafe as one path
# component: a character outside printable ASCII (NUL, control, DEL, non-ASCII), a
# separator, "..", a leading dot, surrounding spaces. Other defects (PS3.5 9.1: a
# leading zero, an empty component, a letter) are accepted, as DCMTK and Orthanc do.
UID_MAX = 64
_UID_UNSAFE = re.compile(r"[^\x21-\x7e ]|[/\\]|\.\.|^[. ]| $")
_UID_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def uid_problem(value: str) -> str | None:
    """Why `value` cannot be taken as a UID at all (0xC210), or None."""
    if not value:
        return "missing or empty"
    if len(value) > UID_MAX:
        return f"{len(value)} characters long (at most {UID_MAX})"
    if (unsafe := _UID_UNSAFE.search(value)) is not None:
        return f"{unsafe.group()!r} at {unsafe.start()} is unsafe in a file name"
    return None


def uid_defect(value: str) -> str | None:
    """What makes a UID `uid_problem` accepts non-conformant (PS3.5 9.1), or None."""
    if re.fullmatch(RE_VALID_UID, value):
        return None
    for n, component in enumerate(value.split("."), 1):
        if not component:  # "..", a leading dot: refused by uid_problem
            return "ends with a dot"
        if _UID_COMPONENT.fullmatch(component) is None:
            what = "has a leading zero" if component.isdigit() else "is not a number"
            return f"component {n} {component!r} {what}"
    return "not a UID"  # unreachable: every way to miss RE_VALID_UID is named above


def check_identity(ds: Dataset, sop_instance_uid: str) -> list[str]:
    """Check the identity UIDs; return the defects of those accepted as they are.

    Garbage or a truncated stream parses to a header without identity UIDs: CannotUnderstand
    (0xC210), as for a UID that `uid_problem` refuses.
    """
    defects = []
    for keyword in IDENTITY:
        value = str(ds.get(keyword, ""))
        if re.fullmatch(RE_VALID_UID, value) and len(value) <= UID_MAX:
            continue  # the usual case: conformant
        if (problem := uid_problem(value)) is not None:
            raise CannotUnderstand(f"cannot parse the dataset: {keyword} {problem}")
        defects.append(f"{keyword} {value} ({uid_defect(value)})")
    if str(ds.SOPInstanceUID) != sop_instance_uid:
        raise CannotUnderstand(
            f"dataset SOP Instance UID {ds.SOPInstanceUID} differs from the request's"
        )
    return defects


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
