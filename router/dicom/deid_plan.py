"""Table E.1-1 compiled for one option set, the markers pre-encoded, and bounded caches.

What `router.dicom.deid` would otherwise recompute for every element of every instance:
the action of a tag under the options (a dict lookup here, computed once per option set),
the PS3.15 markers (encoded once per option set and syntax, inserted as raw elements),
and the keyed replacements of UIDs and dates (cached per profile, bounded). All of it is
pure speed: the output is the same with or without it (tests/test_deid_output.py pins it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Hashable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, lru_cache
from io import BytesIO
from typing import Generic, TypeVar

from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from router.dicom.deid_iod import resolve
from router.dicom.deid_table import BASIC_CODE, OPTION_CODES, action, table

CACHE_ENTRIES = 4096  # UIDs (or dates) a profile remembers: a few series' worth

# UI attributes the table does not list that name a class, a syntax or a registry: kept.
KEPT_UID_KEYWORDS = re.compile(r"(Class|TransferSyntax|CodingScheme|Implementation).*UID$")

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Bounded(Generic[_K, _V]):
    """A dict of at most `limit` entries; the oldest goes first (a peer sends any number)."""

    def __init__(self, limit: int = CACHE_ENTRIES) -> None:
        self.limit = limit
        self.entries: dict[_K, _V] = {}

    def get(self, key: _K) -> _V | None:
        """The cached value, or None."""
        return self.entries.get(key)

    def put(self, key: _K, value: _V) -> _V:
        """Remember `value` (evicting the oldest entry when full); return it."""
        entries = self.entries
        if len(entries) >= self.limit:
            # Another thread may evict first: the bound holds all the same.
            with suppress(KeyError, RuntimeError, StopIteration):
                del entries[next(iter(entries))]
        entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class Caches:
    """One profile's caches: UID replacements and shifted dates."""

    uids: Bounded[str, str] = field(default_factory=Bounded)
    dates: Bounded[tuple[str, int], str] = field(default_factory=Bounded)


@dataclass(frozen=True)
class Plan:
    """The table's actions for one option set, by exact tag.

    `top`: as the options give them (conditional forms unresolved: the caller resolves
    them by the IOD's Types); `nested` (items, file meta): conditional forms resolved to
    the one removing most, as deid_iod.resolve does without Types.
    """

    options: frozenset[str]
    top: dict[int, str]
    nested: dict[int, str]
    retain_uids: bool
    modified_dates: bool

    def wildcard(self, tag: int, top: bool) -> str | None:
        """The action of a tag of a wildcard row (groups 50xx, 60xx), or None: not listed."""
        for mask, value, row in table().wildcards:
            if tag & mask == value:
                todo = action(row, self.options)
                return todo if top else resolve(todo, None, tag)
        return None


@lru_cache(maxsize=64)
def plan(options: frozenset[str]) -> Plan:
    """The compiled table for `options` (once per option set)."""
    top = {tag: action(row, options) for tag, row in table().exact.items()}
    nested = {tag: resolve(todo, None, tag) for tag, todo in top.items()}
    return Plan(
        options,
        top,
        nested,
        "retain_uids" in options,
        "retain_longitudinal_modified_dates" in options,
    )


@cache
def kept_uid_tags() -> frozenset[int]:
    """The dictionary's UI attributes naming a class, syntax or registry (kept unless listed)."""
    return frozenset(
        tag
        for tag, entry in DicomDictionary.items()
        if entry[0] == "UI" and KEPT_UID_KEYWORDS.search(entry[4])
    )


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str | None:
    """The VR of a tag read without one: the dictionary's, None when unknown or ambiguous."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    return None if " or " in vr else vr


def mark(ds: Dataset, options: Collection[str]) -> None:
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


@lru_cache(maxsize=256)
def markers(options: frozenset[str], implicit: bool, little: bool) -> tuple[RawDataElement, ...]:
    """`mark`'s elements encoded once in a syntax: raw elements to insert as they are."""
    ds = Dataset()
    mark(ds, options)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    parsed = read_dataset(BytesIO(fp.getvalue()), implicit, little)
    raws = tuple(parsed.get_item(tag) for tag in parsed.keys())  # noqa: SIM118 (raw)
    assert all(isinstance(r, RawDataElement) for r in raws), "markers read back raw"
    return raws  # type: ignore[return-value]
