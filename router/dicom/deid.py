"""The PS3.15 Basic Profile applied to a dataset: pure, keyed, the same everywhere.

Every replacement is derived from HMAC-SHA256 under the profile's key: UIDs become
2.25.<decimal of a 128-bit UUID (version 8) taken from the HMAC of the original>, the
patient's ID and name a pseudonym from the HMAC of (Issuer of Patient ID, Patient ID),
dummy strings the HMAC of the tag and original value, and dates (Retain Longitudinal
Modified Dates) move back by a per-patient number of days from the HMAC of the patient.
So one key gives one mapping in every worker, after a restart and on another box, and
nobody without the key can recompute it from the original values.

The conditional actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) take the form the attribute's
Type in the IOD of the instance's SOP class asks for (deid_iod.resolve, through
`Context.resolve`); in nested items and for an unknown SOP class, the one removing most.

Speed (issue 17: 2 ms a CT): the table is compiled per option set (deid_plan), elements
stay raw (pydicom's undecoded bytes, written back as they were) unless their action
needs the value: X deletes, Z empties and a UID is replaced without decoding; only D, C,
sequences and an element whose VR the bytes do not tell (UN, implicit ambiguous) are
decoded, then handled as before.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from router.dicom.deid_iod import resolve, types_for
from router.dicom.deid_plan import (
    Caches,
    Plan,
    implicit_vr,
    kept_uid_tags,
    mark,
    markers,
    plan,
)

_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
_NAMES = ("PatientName", "OtherPatientNames", "ReferringPhysicianName")
_IDS = ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs")
_ORIGINAL_TAGS = tuple(
    int(tag_for_keyword(k) or 0)
    for k in ("SpecificCharacterSet", *_NAMES, *_IDS, "IssuerOfPatientID")
)
_UNDEFINED = 0xFFFFFFFF
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "UC": 64, "ST": 64}
_TEXT_VRS = {"AE", "CS", "SH", "LO", "PN", "UC", "ST", "LT", "UT"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0"}
_DUMMY.update(IS="0", UR="urn:x-dummy")  # D: a value, never empty
MAX_SHIFT_DAYS = 3650  # a patient's dates move back 1..MAX_SHIFT_DAYS days


@dataclass(frozen=True)
class Profile:
    """A de-identification profile: the key and the options (names of deid_table)."""

    key: bytes = field(repr=False)
    options: frozenset[str] = frozenset()
    name: str = "deidentify"
    caches: Caches = field(default_factory=Caches, repr=False, compare=False)


@dataclass
class Context:
    """What one instance's transform derives from its original header, before changing it."""

    profile: Profile
    pseudonym: str
    shift_days: int
    original: Dataset = field(repr=False)  # the header's patient elements, as received
    types: Mapping[int, str] | None = None  # {tag: Type} in the IOD of the SOP class

    @classmethod
    def of(cls, profile: Profile, header: Dataset) -> Context:
        """The context of the instance whose (original, top-level) header is `header`."""
        # A copy of the few elements read here, so the header's stay undecoded (raw) and
        # the values Clean Descriptors needs are the received ones even after Z on them.
        original = Dataset()
        for tag in _ORIGINAL_TAGS:
            elem = header.get_item(tag)
            if elem is not None:
                original[tag] = elem if isinstance(elem, RawDataElement) else copy.copy(elem)
        patient = f"{original.get('IssuerOfPatientID', '')}\\{original.get('PatientID', '')}"
        digest = _hmac(profile.key, "patient", patient)
        return cls(
            profile,
            pseudonym="DR" + digest.hex()[:14].upper(),
            shift_days=1 + int.from_bytes(digest[16:24]) % MAX_SHIFT_DAYS,
            original=original,
            types=types_for(str(header.get("SOPClassUID", ""))),
        )

    @cached_property
    def identifying(self) -> tuple[str, ...]:
        """The values Clean Descriptors removes from free text, longest first."""
        words: list[str] = []
        for keyword in _NAMES:
            words += re.split(r"[\^= ,]+", str(self.original.get(keyword, "")))
        for keyword in _IDS:
            words.append(str(self.original.get(keyword, "")))
        return tuple(sorted({w for w in words if len(w) >= 3}, key=len, reverse=True))

    @property
    def plan(self) -> Plan:
        """The table compiled for the profile's options."""
        return plan(self.profile.options)

    def resolve(self, todo: str, tag: int) -> str:
        """The concrete form of a conditional action of a top-level element, by the
        attribute's Type in the IOD of the instance's SOP class."""
        return resolve(todo, self.types, tag)

    def uid(self, value: str) -> str:
        """The keyed replacement of one UID (registry UIDs are kept)."""
        uids = self.profile.caches.uids
        cached = uids.get(value)
        if cached is not None:
            return cached
        return uids.put(value, _uid(self.profile.key, value))


def _uid(key: bytes, value: str) -> str:
    value = value.strip("\0 ")
    if not value or value in UID_dictionary:
        return value
    raw = bytearray(_hmac(key, "uid", value)[:16])
    raw[6] = raw[6] & 0x0F | 0x80  # UUID version 8 (RFC 9562), as ISO/IEC 9834-8 asks
    raw[8] = raw[8] & 0x3F | 0x80  # RFC variant
    return f"2.25.{int.from_bytes(raw)}"


# SOP classes whose images usually carry burned-in text (names as in pydicom's dictionary).
BURNED_IN_CLASSES = (
    "Ultrasound",
    "Secondary Capture",
    "X-Ray Angiographic",
    "X-Ray Radiofluoroscopic",
    "Encapsulated",
    "Video",
)


def may_have_burned_in(header: Dataset) -> bool:
    """Burned In Annotation YES, or absent on a SOP class that usually has burned-in text."""
    said = str(header.get("BurnedInAnnotation", "")).strip().upper()
    if said:
        return said != "NO"
    name = UID_dictionary.get(str(header.get("SOPClassUID", "")), ("",))[0]
    return any(kind in name for kind in BURNED_IN_CLASSES)


def _hmac(key: bytes, purpose: str, value: str) -> bytes:
    return hmac.digest(key, f"{purpose}\0{value}".encode(), hashlib.sha256)


def deidentify(ds: Dataset, ctx: Context, *, markers: bool = True) -> bool:
    """Apply the profile to `ds` at every depth (and its file meta); True when it changed.

    `markers`: add the PS3.15 markers (the top-level header; not a part after Pixel Data).
    """
    changed = _clean(ds, ctx, top=True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        changed = _clean(meta, ctx, top=False) or changed  # Media Storage SOP Instance UID: U
    if markers:
        _mark(ds, ctx.profile.options)
        changed = True
    return changed


def _clean(ds: Dataset, ctx: Context, *, top: bool) -> bool:
    """One dataset (an item at any depth): each element by its table action.

    `top`: the instance's own elements, whose conditional actions `ctx.resolve` turns into
    one form; in items (and the file meta) the form removing most.
    """
    changed = False
    compiled = ctx.plan
    actions = compiled.top if top else compiled.nested
    for tag in list(ds.keys()):
        if tag & 0xFFFF == 0 and tag >> 16 != 0x0002:
            del ds[tag]  # a group length would go stale: pydicom recomputes none
            continue
        if tag >> 16 & 1:
            del ds[tag]  # private: X (retain_safe_private is refused)
            changed = True
            continue
        todo = actions.get(tag)
        if todo is None and 0x50000000 <= tag < 0x61000000:
            todo = compiled.wildcard(tag, top)  # curves (50xx), overlays (60xx)
        listed = todo is not None
        if todo is None:
            todo = "K"
        elif top and "/" in todo:
            todo = ctx.resolve(todo, tag)
        if todo == "X":
            del ds[tag]
            changed = True
            continue
        elem = ds.get_item(tag)
        vr = _raw_vr(elem) if isinstance(elem, RawDataElement) else None
        if vr is None or not isinstance(elem, RawDataElement):
            # decoded already, or a VR only pydicom's decoding settles
            changed = _decoded(ds[tag], todo, listed, ctx) or changed
        elif todo == "Z":
            ds[tag] = _emptied(elem, ctx)
            changed = True
        elif todo == "C" and vr == "TM":
            changed = True  # kept as it is (see _cleaned): no need to decode it
        elif vr == "SQ" or todo in ("D", "C"):
            changed = _decoded(ds[tag], todo, listed, ctx) or changed
        elif vr == "UI" and _replaced(todo, listed, tag, ctx):
            ds[tag] = _raw_uids(elem, ctx)
            changed = True
    return changed


def _raw_vr(elem: RawDataElement) -> str | None:
    """The VR of an undecoded element, None when only decoding can settle it."""
    if elem.VR is None:
        return implicit_vr(int(elem.tag))
    return None if elem.VR == "UN" else elem.VR


def _replaced(todo: str, listed: bool, tag: int, ctx: Context) -> bool:
    """A UI value is replaced when its row says U (some do even under Retain UIDs), or when
    the table does not list it, Retain UIDs is not chosen and it names no class, syntax or
    registry (a listed UID follows its row: K keeps it)."""
    if listed:
        return todo == "U"
    return not ctx.plan.retain_uids and tag not in kept_uid_tags()


def _emptied(elem: RawDataElement, ctx: Context) -> RawDataElement:
    """Z on an undecoded element: no value (a sequence keeps its length form), or the
    keyed pseudonym for Patient Name and Patient ID."""
    if elem.tag in (_PATIENT_NAME, _PATIENT_ID):
        value = _padded(ctx.pseudonym, " ")
        return elem._replace(length=len(value), value=value)
    length = _UNDEFINED if elem.length == _UNDEFINED else 0
    return elem._replace(length=length, value=b"")


def _raw_uids(elem: RawDataElement, ctx: Context) -> RawDataElement:
    """U on an undecoded UI element: each value replaced, encoded as pydicom would."""
    text = (elem.value or b"").decode("latin-1").rstrip("\0 ")
    uids = "\\".join(ctx.uid(v) for v in text.split("\\")) if text else ""
    value = _padded(uids, "\0")
    return elem._replace(length=len(value), value=value)


def _padded(text: str, pad: str) -> bytes:
    return (text + pad if len(text) % 2 else text).encode("latin-1")


def _decoded(elem: DataElement, todo: str, listed: bool, ctx: Context) -> bool:
    """One decoded element by its action (Z, a sequence, D, C or U); True when it changed."""
    if todo == "Z":
        _empty(elem)
        if elem.tag in (_PATIENT_NAME, _PATIENT_ID):
            elem.value = ctx.pseudonym  # keyed pseudonym: the same patient, one name
        return True
    if elem.VR == "SQ":
        changed = False
        for item in elem.value:
            changed = _clean(item, ctx, top=False) or changed
        return changed
    if todo == "D":
        elem.value = _dummy(elem, ctx)
    elif todo == "C":
        elem.value = _cleaned(elem, ctx)
    elif elem.VR == "UI" and _replaced(todo, listed, elem.tag, ctx):
        elem.value = _each(elem, ctx.uid)  # U, and every instance UID not listed
    else:
        return False
    return True


def _empty(elem: DataElement) -> None:
    elem.value = Sequence() if elem.VR == "SQ" else None


def _each(elem: DataElement, fn: Callable[[str], str]) -> object:
    """`fn` applied to each value of a (possibly multi-valued) element."""
    values = elem.value
    if isinstance(values, MultiValue | list):
        return [fn(str(v)) for v in values]
    return None if values is None or values == "" else fn(str(values))


def _dummy(elem: DataElement, ctx: Context) -> object:
    """A non-empty stand-in with the element's VR: keyed for strings, fixed otherwise."""
    vr = elem.VR
    if vr == "UI":
        return elem.value if ctx.plan.retain_uids else _each(elem, ctx.uid)
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMBER_VRS:
        return 0
    if vr in _TEXT_VRS:
        token = _hmac(ctx.profile.key, f"{int(elem.tag):08X}", str(elem.value)).hex().upper()
        return token[: _MAX_LENGTH.get(vr, 64)]
    return b"\0\0"  # OB, OW, UN...: two zero bytes (an even length)


def _cleaned(elem: DataElement, ctx: Context) -> object:
    """C: dates moved by the patient's offset; text without the instance's identifying values."""
    vr = elem.VR
    if vr in ("DA", "DT"):
        if not ctx.plan.modified_dates:
            return elem.value
        return _each(elem, lambda v: _shifted(v, ctx))
    if vr in _TEXT_VRS:
        return _each(elem, lambda v: _redact(v, ctx.identifying))
    if vr == "TM":
        return elem.value  # dates move by whole days: the time of day stays
    return _dummy(elem, ctx)  # binary and numbers cannot be cleaned: a dummy


def _shifted(value: str, ctx: Context) -> str:
    dates = ctx.profile.caches.dates
    key = (value, ctx.shift_days)
    cached = dates.get(key)
    return cached if cached is not None else dates.put(key, _shift(*key))


def _shift(value: str, days: int) -> str:
    """A DA or DT value moved `days` back; its time and offset kept; unparsable: a dummy."""
    try:
        day = datetime.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return _DUMMY["DA"]
    return (day - datetime.timedelta(days=days)).strftime("%Y%m%d") + value[8:]


def _redact(value: str, words: Iterable[str]) -> str:
    for word in words:
        value = re.sub(re.escape(word), "*" * len(word), value, flags=re.IGNORECASE)
    return value


def _mark(ds: Dataset, options: frozenset[str]) -> None:
    """The PS3.15 markers: pre-encoded raw elements when `ds` was read from bytes."""
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        mark(ds, options)  # a dataset built in memory: no encoding to pre-encode in
        return
    for raw in markers(options, implicit, little):
        ds[raw.tag] = raw
