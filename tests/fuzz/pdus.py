"""Fuzz PDUs: a valid conversation's PDUs, and mutations of them (PS3.8 §9).

Two families. `rq-*` cases replace the A-ASSOCIATE-RQ that opens a fresh connection.
In-association cases send one broken PDU on an established association, then a valid
C-ECHO-RQ as a probe: its answer says whether the association survived.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from functools import cache

from tests.fuzz.ul import (
    ABORT,
    ASSOCIATE_RQ,
    MCH_COMMAND,
    MCH_DATA,
    MCH_LAST,
    P_DATA,
    RELEASE_RQ,
    VERIFICATION,
    abort_pdu,
    associate_rq,
    command_set,
    echo_rq,
    pdu,
    pdv,
    release_rq,
    store_rq,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


@cache
def valid_rq(calling: str = "FUZZER") -> bytes:
    """The A-ASSOCIATE-RQ the rq-* mutations start from: Verification and CT."""
    return associate_rq([(1, VERIFICATION, IMPLICIT_LE), (3, CT, EXPLICIT_LE)], calling)


def split_items(body: bytes) -> list[bytes]:
    """An A-ASSOCIATE-RQ body's variable items (after the 68-byte fixed part), whole."""
    items, rest = [], body[68:]
    while len(rest) >= 4:
        (length,) = struct.unpack(">H", rest[2:4])
        items.append(rest[: 4 + length])
        rest = rest[4 + length :]
    return items


def join_rq(fixed: bytes, items: list[bytes]) -> bytes:
    """An A-ASSOCIATE-RQ from its fixed part and items, with a correct PDU length."""
    return pdu(ASSOCIATE_RQ, fixed + b"".join(items))


def _flip(rng: random.Random, data: bytes, lo: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(lo, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 16) :]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _length(rng: random.Random, true_length: int) -> int:
    return rng.choice([0, 1, true_length - 1, true_length + 1, 0xFFFFFFFF, 0x7FFFFFFF,
                       true_length * 2, 1 << 24])


def _pdu_length(rng: random.Random, data: bytes) -> bytes:
    (length,) = struct.unpack(">I", data[2:6])
    return data[:2] + struct.pack(">I", _length(rng, length) & 0xFFFFFFFF) + data[6:]


def _pdu_type(rng: random.Random, data: bytes) -> bytes:
    new = rng.choice([t for t in (0, 1, 2, 3, 4, 5, 6, 7, 8, 0x10, 0x7F, 0xFF) if t != data[0]])
    return bytes([new]) + data[1:]


# --------------------------------------------------------------------------- A-ASSOCIATE-RQ

RqMutation = Callable[[random.Random], bytes]


def _rq_parts(rng: random.Random) -> tuple[bytes, list[bytes]]:
    raw = valid_rq()
    return raw[6:74], split_items(raw[6:])


def rq_item_length(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    n = rng.randrange(len(items))
    length = struct.unpack(">H", items[n][2:4])[0]
    new = rng.choice([0, 1, length - 1, length + 1, 0xFFFF, length * 2]) & 0xFFFF
    items[n] = items[n][:2] + struct.pack(">H", new) + items[n][4:]
    return join_rq(fixed, items)


def rq_item_type(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    n = rng.randrange(len(items))
    new = rng.choice([0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x00, 0xFF])
    items[n] = bytes([new]) + items[n][1:]
    return join_rq(fixed, items)


def rq_sub_item_type(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    n = rng.choice([i for i, item in enumerate(items) if item[0] in (0x20, 0x50)])
    item = bytearray(items[n])
    at = 8 if item[0] == 0x20 else 4  # presentation context: ID, 3 reserved, then sub-items
    item[at] = rng.choice([0x10, 0x20, 0x30, 0x40, 0x50, 0x51, 0x52, 0x55, 0x00, 0xFF])
    items[n] = bytes(item)
    return join_rq(fixed, items)


def rq_context_id(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    n = rng.choice([i for i, item in enumerate(items) if item[0] == 0x20])
    items[n] = items[n][:4] + bytes([rng.choice([0, 2, 254, 255, 3])]) + items[n][5:]
    return join_rq(fixed, items)


def rq_duplicate_item(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    n = rng.randrange(len(items))
    items.insert(n, items[n])
    return join_rq(fixed, items)


def rq_remove_item(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    del items[rng.randrange(len(items))]
    return join_rq(fixed, items)


def rq_shuffle_items(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    rng.shuffle(items)
    return join_rq(fixed, items)


def rq_ae_title(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    title = rng.choice([b"\x00" * 16, b" " * 16, b"A\x01B\x1f\x7fC".ljust(16), b"\xff" * 16,
                        b"ABC\\DEF".ljust(16), b"\n\r\t" * 5 + b"x", rng.randbytes(16)])
    at = rng.choice([4, 20])  # called, calling
    fixed = fixed[:at] + title + fixed[at + 16 :]
    return join_rq(fixed, items)


def rq_protocol_version(rng: random.Random) -> bytes:
    fixed, items = _rq_parts(rng)
    fixed = struct.pack(">H", rng.choice([0, 2, 0x8000, 0xFFFF])) + fixed[2:]
    return join_rq(fixed, items)


def rq_many_contexts(rng: random.Random) -> bytes:
    count = rng.choice([128, 200, 255])
    contexts = [(2 * n + 1 if n < 128 else (2 * n + 1) % 256, CT, EXPLICIT_LE)
                for n in range(count)]
    raw = associate_rq(contexts)
    return raw


def rq_max_length(rng: random.Random) -> bytes:
    raw = valid_rq()
    at = raw.index(b"\x51\x00\x00\x04") + 4
    return raw[:at] + struct.pack(">I", rng.choice([0, 1, 6, 0xFFFFFFFF])) + raw[at + 4 :]


def rq_long_uid(rng: random.Random) -> bytes:
    uid = rng.choice(["1." * 200 + "1", "", "x" * 64, "1.2.\x00.4", "9" * 65])
    fixed, items = _rq_parts(rng)
    n = rng.choice([i for i, item in enumerate(items) if item[0] in (0x10, 0x20)])
    if items[n][0] == 0x10:
        items[n] = struct.pack(">BBH", 0x10, 0, len(uid)) + uid.encode("latin-1")
    else:
        sub = struct.pack(">BBH", 0x30, 0, len(uid)) + uid.encode("latin-1")
        ts = struct.pack(">BBH", 0x40, 0, len(EXPLICIT_LE)) + EXPLICIT_LE.encode()
        body = items[n][4:8] + sub + ts
        items[n] = struct.pack(">BBH", 0x20, 0, len(body)) + body
    return join_rq(fixed, items)


RQ_MUTATIONS: dict[str, RqMutation] = {
    "rq-valid": lambda rng: valid_rq(),
    "rq-bit-flip": lambda rng: _flip(rng, valid_rq()),
    "rq-byte-insert": lambda rng: _insert(rng, valid_rq()),
    "rq-byte-delete": lambda rng: _delete(rng, valid_rq()),
    "rq-truncate": lambda rng: _truncate(rng, valid_rq()),
    "rq-pdu-length": lambda rng: _pdu_length(rng, valid_rq()),
    "rq-pdu-type": lambda rng: _pdu_type(rng, valid_rq()),
    "rq-item-length": rq_item_length,
    "rq-item-type": rq_item_type,
    "rq-sub-item-type": rq_sub_item_type,
    "rq-context-id": rq_context_id,
    "rq-duplicate-item": rq_duplicate_item,
    "rq-remove-item": rq_remove_item,
    "rq-shuffle-items": rq_shuffle_items,
    "rq-ae-title": rq_ae_title,
    "rq-protocol-version": rq_protocol_version,
    "rq-many-contexts": rq_many_contexts,
    "rq-max-length": rq_max_length,
    "rq-long-uid": rq_long_uid,
    "rq-garbage": lambda rng: rng.randbytes(rng.randrange(1, 512)),
    "rq-trailing-garbage": lambda rng: valid_rq() + rng.randbytes(rng.randrange(1, 64)),
    # Then the client stays connected and silent: the router must drop it on its own.
    "rq-stall": lambda rng: valid_rq()[: rng.randrange(0, len(valid_rq()))],
}


# --------------------------------------------------------------------------- in an association

InMutation = Callable[[random.Random, int], bytes]  # (rng, message ID) -> bytes to send


def _echo_pdu(message_id: int, context_id: int = 1, mch: int = MCH_COMMAND | MCH_LAST) -> bytes:
    return pdu(P_DATA, pdv(context_id, mch, echo_rq(message_id)))


def pdv_length(rng: random.Random, mid: int) -> bytes:
    command = echo_rq(mid)
    length = _length(rng, len(command) + 2) & 0xFFFFFFFF
    return pdu(P_DATA, struct.pack(">IBB", length, 1, MCH_COMMAND | MCH_LAST) + command)


def pdv_context_id(rng: random.Random, mid: int) -> bytes:
    return _echo_pdu(mid, context_id=rng.choice([0, 2, 5, 127, 254, 255]))


def pdv_mch(rng: random.Random, mid: int) -> bytes:
    mch = rng.choice([MCH_COMMAND, MCH_DATA, MCH_LAST, 0x04, 0x07, 0x80, 0xFF, 0xFD])
    return _echo_pdu(mid, mch=mch)


def command_garbage(rng: random.Random, mid: int) -> bytes:
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, rng.randbytes(rng.randrange(0, 300))))


def command_unknown_field(rng: random.Random, mid: int) -> bytes:
    field = rng.choice([0x0FFF, 0x8001, 0x0020, 0x0021, 0x0010, 0x0000, 0xFFFF])
    command = command_set(AffectedSOPClassUID=VERIFICATION, CommandField=field,
                          MessageID=mid, CommandDataSetType=0x0101)
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, command))


def command_unknown_element(rng: random.Random, mid: int) -> bytes:
    command = echo_rq(mid)
    elem = rng.choice([0x0003, 0x0FFF, 0x5555, 0x0901])
    extra = struct.pack("<HHI", 0, elem, 4) + rng.randbytes(4)
    body = command[12:] + extra  # keep tags ascending only sometimes: the router must cope
    command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, command))


def command_missing_element(rng: random.Random, mid: int) -> bytes:
    elements: dict[str, object] = {"AffectedSOPClassUID": VERIFICATION, "CommandField": 0x0030,
                                   "MessageID": mid, "CommandDataSetType": 0x0101}
    del elements[rng.choice(list(elements))]
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, command_set(**elements)))


def command_group_length(rng: random.Random, mid: int) -> bytes:
    command = bytearray(echo_rq(mid))
    command[8:12] = struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF, len(command)]))
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, bytes(command)))


def fragment_before_command(rng: random.Random, mid: int) -> bytes:
    data = pdu(P_DATA, pdv(3, rng.choice([MCH_DATA, MCH_DATA | MCH_LAST]), rng.randbytes(64)))
    return data + _echo_pdu(mid)


def command_not_last(rng: random.Random, mid: int) -> bytes:
    command = echo_rq(mid)
    cut = rng.randrange(1, len(command))
    first = pdu(P_DATA, pdv(1, MCH_COMMAND, command[:cut]))
    return first + rng.choice([release_rq(), _echo_pdu(mid), b""])


def store_without_dataset(rng: random.Random, mid: int) -> bytes:
    command = store_rq(mid, CT, "1.2.3.4")
    return pdu(P_DATA, pdv(3, MCH_COMMAND | MCH_LAST, command)) + rng.choice(
        [_echo_pdu(mid + 1), release_rq(), pdu(P_DATA, b"")])


def store_on_echo_context(rng: random.Random, mid: int) -> bytes:
    command = store_rq(mid, CT, "1.2.3.4")
    data = pdv(1, MCH_DATA | MCH_LAST, rng.randbytes(100))
    return pdu(P_DATA, pdv(1, MCH_COMMAND | MCH_LAST, command)) + pdu(P_DATA, data)


def many_pdvs(rng: random.Random, mid: int) -> bytes:
    command = echo_rq(mid)
    pieces = [pdv(1, MCH_COMMAND, command[i : i + 1]) for i in range(len(command) - 1)]
    pieces.append(pdv(1, MCH_COMMAND | MCH_LAST, command[-1:]))
    return pdu(P_DATA, b"".join(pieces))


def release_mutated(rng: random.Random, mid: int) -> bytes:
    return rng.choice([pdu(RELEASE_RQ, b""), pdu(RELEASE_RQ, b"\xff" * 4),
                       pdu(RELEASE_RQ, rng.randbytes(64)), _pdu_length(rng, release_rq())])


def abort_mutated(rng: random.Random, mid: int) -> bytes:
    return rng.choice([abort_pdu(rng.randrange(256), rng.randrange(256)), pdu(ABORT, b""),
                       pdu(ABORT, rng.randbytes(rng.randrange(1, 64)))])


IN_MUTATIONS: dict[str, InMutation] = {
    "pdata-valid": lambda rng, mid: _echo_pdu(mid),
    "pdata-bit-flip": lambda rng, mid: _flip(rng, _echo_pdu(mid)),
    "pdata-byte-insert": lambda rng, mid: _insert(rng, _echo_pdu(mid)),
    "pdata-byte-delete": lambda rng, mid: _delete(rng, _echo_pdu(mid)),
    "pdata-truncate": lambda rng, mid: _truncate(rng, _echo_pdu(mid)),
    "pdata-pdu-length": lambda rng, mid: _pdu_length(rng, _echo_pdu(mid)),
    "pdata-empty": lambda rng, mid: pdu(P_DATA, b""),
    "pdv-length": pdv_length,
    "pdv-context-id": pdv_context_id,
    "pdv-message-control-header": pdv_mch,
    "pdv-many-one-byte": many_pdvs,
    "command-garbage": command_garbage,
    "command-unknown-field": command_unknown_field,
    "command-unknown-element": command_unknown_element,
    "command-missing-element": command_missing_element,
    "command-group-length": command_group_length,
    "command-not-last": command_not_last,
    "fragment-before-command": fragment_before_command,
    "store-without-dataset": store_without_dataset,
    "store-on-echo-context": store_on_echo_context,
    "pdu-type-swap": lambda rng, mid: _pdu_type(rng, _echo_pdu(mid)),
    "associate-rq-again": lambda rng, mid: valid_rq(),
    "release-mutated": release_mutated,
    "abort-mutated": abort_mutated,
    "garbage": lambda rng, mid: rng.randbytes(rng.randrange(1, 1024)),
    # Then silence, the connection kept open: the router must drop it on its own.
    "pdata-stall": lambda rng, mid: _truncate(rng, _echo_pdu(mid)),
}
