"""Explicit checks of a received PDU's structure, in PS3.8's terms (change 12).

pynetdicom decodes what it is given and fails deep inside with whatever exception the
bad bytes lead to ("'NoneType' object has no attribute 'is_private'", "list index out of
range"). These checks run first, on the raw bytes, and say what is wrong the way the
standard would ("presentation context item length 300 beyond the PDU"); what passes them
is what pynetdicom's decoder and state machine can take. Pure functions, no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pynetdicom.fsm import EVENTS, STATES

from router.net.netlayer.limits import escaped

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
ITEM_NAMES = {
    0x10: "application context",
    0x20: "presentation context",
    0x21: "presentation context",
    0x30: "abstract syntax",
    0x40: "transfer syntax",
    0x50: "user information",
    0x51: "maximum length",
    0x52: "implementation class UID",
    0x55: "implementation version name",
}
FIXED_PART = 74  # PDU header (6) + A-ASSOCIATE-RQ/AC fixed fields (PS3.8 9.3.2: 68)
MAX_UID = 64  # PS3.5 9.1
MAX_VERSION_NAME = 16  # PS3.7 D.3.3.2.2
# Items of an A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3), each: (at least, at most) times.
ANY = 1 << 16  # no limit but the PDU's size
_RQ_ITEMS = {0x10: (1, 1), 0x20: (1, ANY), 0x50: (1, 1)}
_AC_ITEMS = {0x10: (1, 1), 0x21: (1, ANY), 0x50: (1, 1)}
_RQ_CONTEXT = {0x30: (1, 1), 0x40: (1, ANY)}
_AC_CONTEXT = {0x40: (0, 1)}

# The PDU each state machine event stands for (PS3.8 table 9-10), and what a PDU that
# arrives in a state where it cannot be taken is "unexpected" relative to.
PDU_EVENTS = {
    "Evt3": "A-ASSOCIATE-AC",
    "Evt4": "A-ASSOCIATE-RJ",
    "Evt6": "A-ASSOCIATE-RQ",
    "Evt10": "P-DATA-TF",
    "Evt12": "A-RELEASE-RQ",
    "Evt13": "A-RELEASE-RP",
}
WHEN = {
    "Sta2": "before an A-ASSOCIATE-RQ",
    "Sta3": "before the association was accepted",
    "Sta5": "before the A-ASSOCIATE-AC",
    "Sta6": "during the association",
    "Sta7": "after our A-RELEASE-RQ",
    "Sta8": "after the peer's A-RELEASE-RQ",
}


class _Bad(Exception):
    """What is wrong, in protocol terms (raised and caught only in this module)."""


def problem(pdu_type: int, data: bytes | bytearray) -> str | None:
    """What is wrong with a whole received PDU (header included); None if nothing is."""
    try:
        if pdu_type in (ASSOCIATE_RQ, ASSOCIATE_AC):
            _associate(pdu_type, data)
        elif pdu_type in (ASSOCIATE_RJ, RELEASE_RQ, RELEASE_RP, ABORT):
            _fixed(pdu_type, data)
    except _Bad as bad:
        return f"{PDU_NAMES[pdu_type]}: {bad}"
    return None


def unexpected(event: str, state: str) -> str | None:
    """The log reason for a PDU event the state machine aborts on in `state`, if one."""
    if event not in PDU_EVENTS:
        return None
    return f"unexpected {PDU_EVENTS[event]} {WHEN.get(state, 'in ' + STATES[state])}"


def impossible(event: str, state: str) -> str:
    """The log reason for an event the state machine has no transition for."""
    return f"{EVENTS[event]} while {STATES[state][0].lower()}{STATES[state][1:]}"


Buffer = bytes | bytearray


def _items(data: Buffer, start: int, end: int, within: str) -> Iterator[tuple[int, int, int]]:
    """(type, offset of the value, end of the value) of each item in data[start:end]."""
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise _Bad(f"truncated item header in {within}")
        item_type, _, length = struct.unpack_from(">BBH", data, offset)
        if offset + 4 + length > end:
            name = ITEM_NAMES.get(item_type, f"0x{item_type:02X}")
            raise _Bad(f"{name} item length {length} beyond {within}")
        yield item_type, offset + 4, offset + 4 + length
        offset += 4 + length


def _count(found: list[int], allowed: dict[int, tuple[int, int]], within: str) -> None:
    for item_type in found:
        if item_type not in allowed:
            raise _Bad(f"item type 0x{item_type:02X} is not allowed in {within}")
    for item_type, (least, most) in allowed.items():
        n = found.count(item_type)
        if not least <= n <= most:
            name = ITEM_NAMES[item_type]
            expected = f"{least} to {most}" if most < ANY else f"at least {least}"
            raise _Bad(f"{n} {name} items in {within} (expected {expected})")


def _length(name: str, start: int, end: int, least: int, most: int) -> None:
    if not least <= end - start <= most:
        raise _Bad(f"{name} of {end - start} bytes (expected {least} to {most})")


def _associate(pdu_type: int, data: bytes | bytearray) -> None:
    if len(data) < FIXED_PART:
        raise _Bad(f"{len(data) - 6} bytes, shorter than the 68-byte fixed part")
    request = pdu_type == ASSOCIATE_RQ
    found = []
    for item_type, start, end in _items(data, FIXED_PART, len(data), "the PDU"):
        found.append(item_type)
        if item_type == 0x10:
            _length("application context name", start, end, 1, MAX_UID)
        elif item_type in (0x20, 0x21):
            _context(data, start, end, request)
        elif item_type == 0x50:
            _user_information(data, start, end)
    _count(found, _RQ_ITEMS if request else _AC_ITEMS, "the PDU")


def _context(data: bytes | bytearray, start: int, end: int, request: bool) -> None:
    if end - start < 4:
        raise _Bad(f"presentation context item of {end - start} bytes (at least 4)")
    context_id = data[start]
    if context_id % 2 == 0:
        raise _Bad(f"presentation context ID {context_id} is not odd")
    within = f"presentation context {context_id}"
    found = []
    for item_type, sub_start, sub_end in _items(data, start + 4, end, within):
        found.append(item_type)
        if item_type == 0x30 or (item_type == 0x40 and request):
            _length(f"{ITEM_NAMES[item_type]} name", sub_start, sub_end, 1, MAX_UID)
        elif item_type == 0x40:
            _length("transfer syntax name", sub_start, sub_end, 0, MAX_UID)
    _count(found, _RQ_CONTEXT if request else _AC_CONTEXT, within)


def _user_information(data: bytes | bytearray, start: int, end: int) -> None:
    for item_type, sub_start, sub_end in _items(data, start, end, "the user information"):
        if item_type == 0x51:
            _length("maximum length sub-item", sub_start, sub_end, 4, 4)
        elif item_type == 0x52:
            _length("implementation class UID", sub_start, sub_end, 1, MAX_UID)
        elif item_type == 0x55:
            _length("implementation version name", sub_start, sub_end, 1, MAX_VERSION_NAME)
            name = bytes(data[sub_start:sub_end])
            if any(b < 0x20 or b >= 0x7F or b == 0x5C for b in name):  # not of the AE VR
                raise _Bad(f"implementation version name '{escaped(name)}' is not of the AE VR")
        elif item_type not in range(0x53, 0x5A):
            raise _Bad(f"item type 0x{item_type:02X} is not allowed in the user information")


def _fixed(pdu_type: int, data: bytes | bytearray) -> None:
    """A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT: four bytes after the header."""
    if len(data) != 10:
        raise _Bad(f"{len(data) - 6} bytes after the header (expected 4)")
    if pdu_type == ABORT and data[8] not in (0, 1, 2):
        raise _Bad(f"source {data[8]} (expected 0, 1 or 2)")
    if pdu_type == ABORT and data[8] == 2 and data[9] not in (0, 1, 2, 4, 5, 6):
        raise _Bad(f"provider reason {data[9]} (expected 0 to 6, not 3)")
    if pdu_type == ASSOCIATE_RJ and (data[7] not in (1, 2) or data[8] not in (1, 2, 3)):
        raise _Bad(f"result {data[7]}, source {data[8]} (expected 1 or 2, and 1 to 3)")
