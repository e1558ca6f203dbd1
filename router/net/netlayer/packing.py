"""The messages the router packs and unpacks with `struct`, byte-identical to pynetdicom's.

Changes 4, 5, 9 and 10 of router.net.netlayer use them (see its docstring); tests/test_netlayer.py
compares each with what pynetdicom itself encodes or decodes.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

_META_PREFIX = b"\0" * 128 + b"DICM"


def _ui(tag: int, value: str, explicit: bool) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    group, elem = tag >> 16, tag & 0xFFFF
    if explicit:
        return struct.pack("<HH2sH", group, elem, b"UI", len(raw)) + raw
    return struct.pack("<HHL", group, elem, len(raw)) + raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and group 2 as pydicom writes pynetdicom's `create_file_meta`."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(version) % 2:
        version += b" "
    body = b"".join(
        (
            struct.pack("<HH2sHL", 2, 1, b"OB", 0, 2) + b"\0\x01",
            _ui(0x00020002, sop_class, True),
            _ui(0x00020003, sop_instance, True),
            _ui(0x00020010, transfer_syntax, True),
            _ui(0x00020012, PYNETDICOM_IMPLEMENTATION_UID, True),
            struct.pack("<HH2sH", 2, 0x13, b"SH", len(version)) + version,
        )
    )
    return _META_PREFIX + struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body)) + body


def store_rsp_command(sop_class: str, message_id: int, status: int, sop_instance: str) -> bytes:
    """A C-STORE-RSP command set (Implicit VR LE), as `primitive_to_message` encodes it."""
    body = b"".join(
        (
            _ui(0x00000002, sop_class, False),
            struct.pack("<HHLH", 0, 0x0100, 2, 0x8001),
            struct.pack("<HHLH", 0, 0x0120, 2, message_id),
            struct.pack("<HHLH", 0, 0x0800, 2, 0x0101),
            struct.pack("<HHLH", 0, 0x0900, 2, status),
            _ui(0x00001000, sop_instance, False),
        )
    )
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


# The elements of a plain C-STORE-RQ (PS3.7 9.3.1.1) without a Move Originator; any
# other command set takes upstream's decoding.
_STORE_RQ = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_US = struct.Struct("<H")


def store_request(data: bytes | bytearray) -> C_STORE | None:
    """A C-STORE-RQ command set as upstream's `decode` and `message_to_primitive` make it.

    None for any other command set, or one whose decoding upstream would do differently
    (a missing, repeated or multi-valued element), which then takes upstream's path. The
    primitive's setters validate as upstream's do (ValueError, TypeError).
    """
    values: dict[int, bytes | bytearray] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            return None
        group, elem, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group != 0 or offset + length > end or elem in values:
            return None
        values[elem] = data[offset : offset + length]
        offset += length
    values.pop(0x0000, None)  # Command Group Length: not a primitive parameter
    if values.keys() != _STORE_RQ or any(len(values[e]) != 2 for e in (0x100, 0x110, 0x700, 0x800)):
        return None
    if _US.unpack(values[0x0100])[0] != 0x0001 or _US.unpack(values[0x0800])[0] == 0x0101:
        return None
    uids = [bytes(values[e]).decode("latin-1").rstrip("\0 ") for e in (0x0002, 0x1000)]
    if not all(uids) or any("\\" in uid for uid in uids):
        return None
    primitive = C_STORE()
    primitive.AffectedSOPClassUID = uids[0]
    primitive.MessageID = _US.unpack(values[0x0110])[0]
    primitive.Priority = _US.unpack(values[0x0700])[0]
    primitive.AffectedSOPInstanceUID = uids[1]
    primitive.DataSet = BytesIO()  # upstream's (empty) data_set: the dataset is in a file
    return primitive


def encode_p_data(pdu: P_DATA_TF) -> bytes:
    """A P-DATA-TF PDU's bytes, as `P_DATA_TF.encode` makes them (PS3.8 9.3.5)."""
    parts: list[bytes | memoryview] = [b""]
    size = 0
    for item in pdu.presentation_data_value_items:
        data = item.presentation_data_value or b""
        parts.append(struct.pack(">LB", len(data) + 1, item.presentation_context_id))
        parts.append(data)
        size += 5 + len(data)
    parts[0] = struct.pack(">BBL", 0x04, 0x00, size)
    return b"".join(parts)
