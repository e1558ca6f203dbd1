"""PS3.15 Table E.1-1 as data, and the options of the Basic Application Level
Confidentiality Profile with their codes (PS3.16 CID 7050).

The table is `data/deid_table.json`: its edition, source and license are named in the
file (scraped from the standard by innolitics/dicom-standard, MIT). This module only
reads it and answers "which action for this tag under these options".
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).parent / "data" / "deid_table.json"

BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")

# option name -> (code value, code meaning) of the De-identification Method Code Sequence
OPTION_CODES: dict[str, tuple[str, str]] = {
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_recognizable_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

# Options this router does not implement, and why (`check` refuses them with this text).
REFUSED: dict[str, str] = {
    "clean_pixel_data": "cleaning burned-in text needs pixel analysis the router does not do;"
    " use burned_in: refuse to withhold images that may carry it",
    "clean_recognizable_visual_features": "needs image processing (defacing) the router does"
    " not do",
    "clean_graphics": "cleaning the text of graphics and overlays is not implemented: the Basic"
    " Profile removes them",
    "clean_structured_content": "cleaning SR content items is not implemented: the Basic"
    " Profile removes the content sequences",
    "retain_safe_private": "needs a per-creator list of safe private attributes (PS3.15 E.3.10)"
    " the router does not ship: every private element is removed",
}

OPTIONS = tuple(OPTION_CODES)
IMPLEMENTED = tuple(o for o in OPTIONS if o not in REFUSED)
EXCLUSIVE = ("retain_longitudinal_full_dates", "retain_longitudinal_modified_dates")


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1: the Basic Profile's action and each option's."""

    name: str
    basic: str
    options: dict[str, str]


@dataclass(frozen=True)
class Table:
    """The table by exact tag, its wildcard rows (groups 50xx, 60xx) and its private row."""

    edition: str
    source: str
    license: str
    exact: dict[int, Row]
    wildcards: tuple[tuple[int, int, Row], ...]  # (mask, value, row)
    private: Row
    rows: int

    def row(self, tag: int) -> Row | None:
        """The row for `tag` (a private tag: the private row), or None when not listed."""
        if tag >> 16 & 1:
            return self.private
        found = self.exact.get(tag)
        if found is not None:
            return found
        for mask, value, row in self.wildcards:
            if tag & mask == value:
                return row
        return None


@cache
def table() -> Table:
    """The table shipped with the router (read once per process)."""
    data: dict[str, Any] = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    exact: dict[int, Row] = {}
    wildcards: list[tuple[int, int, Row]] = []
    private = None
    for tag, basic, options, name in data["rows"]:
        row = Row(name, basic, options)
        if tag == "private":
            private = row
        elif "X" in tag:
            mask = int("".join("0" if c == "X" else "F" for c in tag), 16)
            wildcards.append((mask, int(tag.replace("X", "0"), 16), row))
        else:
            exact[int(tag, 16)] = row
    assert private is not None, "the table has no private attributes row"
    return Table(
        data["edition"],
        data["source"],
        data["license"],
        exact,
        tuple(wildcards),
        private,
        len(data["rows"]),
    )


def action(row: Row, options: Collection[str]) -> str:
    """The row's action under `options`: an option's K wins over its C, either over Basic."""
    chosen = [row.options[o] for o in options if o in row.options]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return row.basic
