"""What a sender's broken or hostile PDUs make the daemon log (issue 22, rows 2 and 6).

Each PDU goes over a real socket to a real daemon. The log must hold one line per
association, saying what was wrong in PS3.8's terms, with every value the peer chose
escaped and cut to `netlayer.limits.MAX_SHOWN` characters, and never an exception's
class name (upstream's decoder and state machine failed with AttributeError, IndexError,
InvalidEventError).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

import pytest

from router.net.netlayer import limits
from tests.daemon import RouterDaemon
from tests.fuzz.campaign import RULE_FILE
from tests.fuzz.pdus import CT, EXPLICIT_LE, join_rq, split_items, valid_rq
from tests.fuzz.ul import (
    ABORT,
    ASSOCIATE_AC,
    P_DATA,
    Connection,
    command_set,
    echo_rq,
    pdu,
    pdv,
)
from tests.peers import echoscu
from tests.test_library_logs import assert_one_record_per_line

pytestmark = pytest.mark.interop

# A forged record: a line break, a timestamp-like start, a NUL and an ANSI escape. 16
# bytes, so that it fits an Implementation Version Name as well as a UID.
FORGED = b"1\nERROR x: y\x00\x1b[1"
FORGED_ESCAPED = "1\\nERROR x: y\\x00\\x1b[1"
EXCEPTION_NAME = re.compile(r"\b\w+(Error|Exception)\b")
LONGEST_LINE = 1024  # no record the netlayer writes comes near: the values in it are cut


def rq_with(field: str, value: bytes) -> bytes:
    """The fuzz suite's valid A-ASSOCIATE-RQ with `field` set to `value`."""
    raw = valid_rq()
    fixed, items = raw[6:74], split_items(raw[6:])
    for n, item in enumerate(items):
        if field == "application-context" and item[0] == 0x10:
            items[n] = struct.pack(">BBH", 0x10, 0, len(value)) + value
        elif field == "abstract-syntax" and item[0] == 0x20 and n == 1:
            sub = struct.pack(">BBH", 0x30, 0, len(value)) + value
            ts = struct.pack(">BBH", 0x40, 0, len(EXPLICIT_LE)) + EXPLICIT_LE.encode()
            body = item[4:8] + sub + ts
            items[n] = struct.pack(">BBH", 0x20, 0, len(body)) + body
        elif field in ("implementation-class-uid", "implementation-version-name") and (
            item[0] == 0x50
        ):
            sub_type = 0x52 if field == "implementation-class-uid" else 0x55
            subs = [s for s in split_user_information(item[4:]) if s[0] != sub_type]
            subs.append(struct.pack(">BBH", sub_type, 0, len(value)) + value)
            body = b"".join(subs)
            items[n] = struct.pack(">BBH", 0x50, 0, len(body)) + body
    return join_rq(fixed, items)


def split_user_information(body: bytes) -> list[bytes]:
    """A user information item's sub-items, whole."""
    subs = []
    while len(body) >= 4:
        (length,) = struct.unpack(">H", body[2:4])
        subs.append(body[: 4 + length])
        body = body[4 + length :]
    return subs


def send(daemon: RouterDaemon, *pdus: bytes, associate: bool = False) -> None:
    """Send `pdus` on a fresh connection (after an accepted association if `associate`),
    then wait for the router's answer."""
    conn = Connection(daemon.port)
    try:
        if associate:
            assert conn.associate(valid_rq(), 10).pdu_type == ASSOCIATE_AC
        for data in pdus:
            conn.send(data)
        conn.read_pdu(10)  # the router's answer: A-ABORT, A-ASSOCIATE-AC/RJ, or a close
    finally:
        conn.close()


def netlayer_lines(daemon: RouterDaemon, count: int = 1) -> list[str]:
    """The router.netlayer records, once `count` of them were logged."""
    daemon.wait_log("router.netlayer", count=count)
    return [line for line in daemon.log().splitlines() if "router.netlayer" in line]


@pytest.fixture
def daemon(router: Callable[..., RouterDaemon]) -> RouterDaemon:
    """A daemon as the fuzz suite runs it (network_timeout 1 s), text logs."""
    return router(RULE_FILE)


# --------------------------------------------------------------------------- row 2


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize(
    "field",
    [
        "application-context",
        "abstract-syntax",
        "implementation-class-uid",
        "implementation-version-name",
    ],
)
def test_a_forged_record_in_an_associate_rq_field_cannot_start_a_line(
    router: Callable[..., RouterDaemon], field: str, log_format: str
) -> None:
    """A line break, NUL and escape in each A-ASSOCIATE-RQ string: every line of the log is
    one record of ours, and no raw control byte is in it."""
    d = router(RULE_FILE, args=("--log-format", log_format))
    send(d, rq_with(field, FORGED))
    assert echoscu(d.port).returncode == 0
    d.stop()
    log = d.log()
    assert_one_record_per_line(log, log_format)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", log), log


def test_a_refused_implementation_version_name_is_quoted_escaped(daemon: RouterDaemon) -> None:
    """The reason quotes the peer's value with its line break, NUL and escape escaped."""
    send(daemon, rq_with("implementation-version-name", FORGED))
    (line,) = netlayer_lines(daemon)
    assert line.endswith(
        f"aborted: A-ASSOCIATE-RQ: implementation version name '{FORGED_ESCAPED}'"
        " is not of the AE VR"
    ), line


def test_a_60_kb_abstract_syntax_is_cut_in_its_log_line(daemon: RouterDaemon) -> None:
    """A 60,000-byte Abstract Syntax Name: refused in one line of bounded length."""
    send(daemon, rq_with("abstract-syntax", b"1.2\n" + b"A" * 60000))
    (line,) = netlayer_lines(daemon)
    assert "abstract syntax name of 60004 bytes (expected 1 to 64)" in line
    assert max(len(line) for line in daemon.log().splitlines()) < LONGEST_LINE


def test_a_long_value_quoted_in_a_reason_is_cut_to_max_shown() -> None:
    """`escaped` cuts at MAX_SHOWN characters and says how long the value was."""
    shown = limits.escaped(b"\n" * 1000)
    assert shown == "\\n" * (limits.MAX_SHOWN // 2) + "... (1000 bytes)"


# --------------------------------------------------------------------------- row 6


def _rq_without_abstract_syntax() -> bytes:
    raw = valid_rq()
    fixed, items = raw[6:74], split_items(raw[6:])
    item = items[1]  # the first presentation context: ID, 3 reserved, then sub-items
    (length,) = struct.unpack(">H", item[10:12])
    body = item[4:8] + item[8 + 4 + length :]
    items[1] = struct.pack(">BBH", 0x20, 0, len(body)) + body
    return join_rq(fixed, items)


def _rq_with_context_id(context_id: int) -> bytes:
    raw = valid_rq()
    fixed, items = raw[6:74], split_items(raw[6:])
    items[1] = items[1][:4] + bytes([context_id]) + items[1][5:]
    return join_rq(fixed, items)


def _rq_item_beyond_pdu() -> bytes:
    raw = valid_rq()
    fixed, items = raw[6:74], split_items(raw[6:])
    items[-1] = items[-1][:2] + struct.pack(">H", 0x4000) + items[-1][4:]
    return join_rq(fixed, items)


BROKEN = {
    "no-abstract-syntax": (
        _rq_without_abstract_syntax,
        "A-ASSOCIATE-RQ: 0 abstract syntax items in presentation context 1 (expected 1 to 1)",
    ),
    "even-context-id": (
        lambda: _rq_with_context_id(2),
        "A-ASSOCIATE-RQ: presentation context ID 2 is not odd",
    ),
    "item-beyond-pdu": (
        _rq_item_beyond_pdu,
        "A-ASSOCIATE-RQ: user information item length 16384 beyond the PDU",
    ),
    "p-data-first": (
        lambda: pdu(P_DATA, pdv(1, 3, echo_rq(1))),
        "unexpected P-DATA-TF before an A-ASSOCIATE-RQ",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_associate_phase_is_logged_in_protocol_terms(
    daemon: RouterDaemon, case: str
) -> None:
    """What upstream failed on with AttributeError/IndexError is named as PS3.8 would."""
    make, reason = BROKEN[case]
    send(daemon, make())
    assert echoscu(daemon.port).returncode == 0
    (line,) = netlayer_lines(daemon)
    assert line.endswith(f"aborted: {reason}"), line
    assert not EXCEPTION_NAME.search(daemon.log()), daemon.log()


IN_ASSOCIATION = {
    "associate-rq-again": (valid_rq(), "unexpected A-ASSOCIATE-RQ during the association"),
    "abort-source": (pdu(ABORT, b"\0\0\x1d\0"), "A-ABORT: source 29 (expected 0, 1 or 2)"),
    "no-command-field": (
        pdu(P_DATA, pdv(1, 3, command_set(AffectedSOPClassUID=CT, MessageID=1,
                                          CommandDataSetType=0x0101))),
        "command set without Command Field (0000,0100)",
    ),
    "short-release-rq": (pdu(0x05, b"\0\0"), "A-RELEASE-RQ: 2 bytes after the header (expected 4)"),
}


@pytest.mark.parametrize("case", sorted(IN_ASSOCIATION))
def test_a_broken_pdu_in_an_association_is_logged_once_in_protocol_terms(
    daemon: RouterDaemon, case: str
) -> None:
    """One line for the association, its reason the protocol's, no exception class name,
    though the bytes after the broken PDU are read (and ignored) until the peer closes."""
    data, reason = IN_ASSOCIATION[case]
    send(daemon, data, b"\0" * 64, associate=True)
    assert echoscu(daemon.port).returncode == 0
    (line,) = netlayer_lines(daemon)
    assert line.endswith(f"aborted: {reason}"), line
    assert not EXCEPTION_NAME.search(daemon.log()), daemon.log()
