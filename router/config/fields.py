"""Reusable field types of the rule file: AE titles, durations, sizes, status codes, names.

Each validates one domain rule once and carries its JSON Schema, so that editors
completing against `dicom-router schema` see the same constraints.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from pydicom.datadict import keyword_dict

from router.dicom.status import (
    FAILURE_RANGES,
    GENERAL_FAILURES,
    SUCCESS,
    WARNINGS,
    hex_code,
    is_failure,
    listing,
)
from router.errors import UnknownName


def _ae_title(value: str) -> str:
    # PS3.5 VR AE, as pynetdicom validates it: <= 16 ASCII chars, no backslash or control.
    value = value.strip()
    if not value:
        raise ValueError("an AE title cannot be empty or all spaces")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    if not value.isascii() or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"AE title {value!r} may hold only ASCII without backslash or control")
    return value


AETitle = Annotated[
    str,
    AfterValidator(_ae_title),
    WithJsonSchema({"type": "string", "maxLength": 16, "pattern": r"^[^\\\x00-\x1f]{1,16}$"}),
]
AEPattern = Annotated[
    str,
    AfterValidator(_ae_title),
    Field(description="an AE title, or a glob such as 'MR*'"),
]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration: write e.g. 500ms, 2s, 5m, 1h")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return value


Seconds = Annotated[
    float,
    BeforeValidator(_duration),
    Field(ge=0),
    WithJsonSchema(
        {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _DURATION.pattern}]}
    ),
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def _byte_size(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size: write e.g. 500MiB, 2GiB")
        unit = (m.group(2) or "B").upper()
        power = "BKMGT".index(unit[0])
        base = 1024 if "I" in unit or unit == "B" else 1000
        return int(float(m.group(1)) * base**power)
    return value


ByteSize = Annotated[
    int,
    BeforeValidator(_byte_size),
    Field(ge=0),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": _SIZE.pattern}]}),
]

# --- status codes -----------------------------------------------------------------------


def _parse_code(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a status code is written in hex, e.g. 0x0124")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"0[xX][0-9A-Fa-f]{1,4}", value.strip()):
        return int(value, 16)
    raise ValueError(f"{value!r} is not a status code: write it in hex, e.g. 0x0124")


def _failure(value: Any) -> int:
    code = _parse_code(value)
    if not is_failure(code):
        raise ValueError(
            f"{hex_code(code)} is not a C-STORE failure status "
            f"(use {listing(GENERAL_FAILURES, FAILURE_RANGES)})"
        )
    return code


def _warning(value: Any) -> int:
    code = _parse_code(value)
    if code not in WARNINGS:
        raise ValueError(
            f"{hex_code(code)} is not a C-STORE warning status (use {listing(WARNINGS)})"
        )
    return code


def _any_status(value: Any) -> int:
    code = _parse_code(value)
    if code != SUCCESS and code not in WARNINGS and not is_failure(code):
        raise ValueError(f"{hex_code(code)} is not a C-STORE status")
    return code


_STATUS_SCHEMA = {
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^0x[0-9A-Fa-f]{4}$"}]
}
FailureStatus = Annotated[int, BeforeValidator(_failure), WithJsonSchema(_STATUS_SCHEMA)]
WarningStatus = Annotated[int, BeforeValidator(_warning), WithJsonSchema(_STATUS_SCHEMA)]
Status = Annotated[int, BeforeValidator(_any_status), WithJsonSchema(_STATUS_SCHEMA)]

# --- names that refer to other parts of the file or to DICOM --------------------------


def keyword(value: str) -> str:
    """A DICOM keyword pydicom knows, else a did-you-mean error."""
    if value not in keyword_dict:
        raise UnknownName("DICOM keyword", value, keyword_dict)
    return value


Keyword = Annotated[str, AfterValidator(keyword)]


def one_or_many(value: Any) -> Any:
    """A lone string is a list of one."""
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(one_or_many), Field(min_length=1)]


def _scalar_text(value: Any) -> Any:
    # YAML turns 3 into int and 1.5 into float; DICOM values are text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_scalar_text)]
