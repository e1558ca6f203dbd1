"""The PS3.15 Basic Profile applied to a dataset: pure, keyed, the same everywhere.

Every replacement is derived from HMAC-SHA256 under the profile's key: UIDs become
2.25.<decimal of a 128-bit UUID (version 8) taken from the HMAC of the original>, the
patient's ID and name a pseudonym from the HMAC of (Issuer of Patient ID, Patient ID),
dummy strings the HMAC of the tag and original value, and dates (Retain Longitudinal
Modified Dates) move back by a per-patient number of days from the HMAC of the patient.
So one key gives one mapping in every worker, after a restart and on another box, and
nobody without the key can recompute it from the original values.

The conditional actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) take the form the attribute's
Type in the IOD of the instance's SOP class asks for (deid_iod.resolve); in nested items
and for an unknown SOP class, the one removing most.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from router.dicom.deid_iod import resolve, types_for
from router.dicom.deid_table import BASIC_CODE, OPTION_CODES, action, table

# UI attributes that name a class, a syntax or a registry, never an instance: kept.
_KEPT_UID_TAGS = re.compile(r"(Class|TransferSyntax|CodingScheme|Implementation).*UID$")
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


@dataclass
class Context:
    """What one instance's transform derives from its original header, before changing it."""

    profile: Profile
    pseudonym: str
    shift_days: int
    identifying: tuple[str, ...]  # values Clean Descriptors removes from free text
    types: Mapping[int, str] | None = None  # {tag: Type} in the IOD of the SOP class

    @classmethod
    def of(cls, profile: Profile, header: Dataset) -> Context:
        """The context of the instance whose (original, top-level) header is `header`."""
        patient = f"{header.get('IssuerOfPatientID', '')}\\{header.get('PatientID', '')}"
        digest = _hmac(profile.key, "patient", patient)
        words: list[str] = []
        for keyword in ("PatientName", "OtherPatientNames", "ReferringPhysicianName"):
            words += re.split(r"[\^= ,]+", str(header.get(keyword, "")))
        for keyword in ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs"):
            words.append(str(header.get(keyword, "")))
        return cls(
            profile,
            pseudonym="DR" + digest.hex()[:14].upper(),
            shift_days=1 + int.from_bytes(digest[16:24]) % MAX_SHIFT_DAYS,
            identifying=tuple(sorted({w for w in words if len(w) >= 3}, key=len, reverse=True)),
            types=types_for(str(header.get("SOPClassUID", ""))),
        )

    def uid(self, value: str) -> str:
        """The keyed replacement of one UID (registry UIDs are kept)."""
        value = value.strip("\0 ")
        if not value or value in UID_dictionary:
            return value
        raw = bytearray(_hmac(self.profile.key, "uid", value)[:16])
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
    changed = _clean(ds, ctx, ctx.types)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        changed = _clean(meta, ctx) or changed  # Media Storage SOP Instance UID: U
    if markers:
        _mark(ds, ctx.profile.options)
        changed = True
    return changed


def _retain_uids(ctx: Context) -> bool:
    return "retain_uids" in ctx.profile.options


def _clean(ds: Dataset, ctx: Context, types: Mapping[int, str] | None = None) -> bool:
    """One dataset (an item at any depth): each element by its table action.

    `types`: the IOD's Types for the top level; None in items (the form removing most).
    """
    changed = False
    options = ctx.profile.options
    rows = table()
    for elem in list(ds):
        tag = int(elem.tag)
        if tag & 0xFFFF == 0 and tag >> 16 != 0x0002:
            del ds[tag]  # a group length would go stale: pydicom recomputes none
            continue
        row = rows.row(tag)
        todo = "K" if row is None else action(row, options)
        if "/" in todo:  # conditional: by the attribute's Type in the IOD (top level)
            todo = resolve(todo, types, tag)
        if tag >> 16 & 1 or todo == "X":
            del ds[tag]
            changed = True
            continue
        if todo == "Z":
            _empty(elem)
            if elem.keyword in ("PatientName", "PatientID"):
                elem.value = ctx.pseudonym  # keyed pseudonym: the same patient, one name
            changed = True
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                changed = _clean(item, ctx) or changed
            continue
        if todo == "D":
            elem.value = _dummy(elem, ctx)
        elif todo == "C":
            elem.value = _cleaned(elem, ctx)
        elif todo == "U" or (row is None and elem.VR == "UI" and not _unlisted_kept(elem, ctx)):
            elem.value = _each(elem, ctx.uid)  # U as listed, and every instance UID not listed
        else:
            continue
        changed = True
    return changed


def _unlisted_kept(elem: DataElement, ctx: Context) -> bool:
    """A UID the table does not list is kept under Retain UIDs, or when it names a class."""
    return _retain_uids(ctx) or bool(_KEPT_UID_TAGS.search(elem.keyword))


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
        return elem.value if _retain_uids(ctx) else _each(elem, ctx.uid)
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
        if "retain_longitudinal_modified_dates" not in ctx.profile.options:
            return elem.value
        return _each(elem, lambda v: _shift(v, ctx.shift_days))
    if vr in _TEXT_VRS:
        return _each(elem, lambda v: _redact(v, ctx.identifying))
    # times stay (dates move by whole days); binary values cannot be cleaned: a dummy
    return elem.value if vr == "TM" else _dummy(elem, ctx)


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


def _mark(ds: Dataset, options: Collection[str]) -> None:
    """Patient Identity Removed, the method, its codes and the temporal information flag."""
    chosen = [o for o in OPTION_CODES if o in options]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"PS3.15 {table().edition} Basic Profile"] + [
        OPTION_CODES[o][1][:64] for o in chosen
    ]
    codes = Sequence()
    for value, meaning in [BASIC_CODE] + [OPTION_CODES[o] for o in chosen]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if "retain_longitudinal_full_dates" in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif "retain_longitudinal_modified_dates" in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
