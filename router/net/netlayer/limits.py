"""What the parts of router.net.netlayer share: limits, the pinned version, logging helpers."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

from pynetdicom.association import Association

from router.errors import ProtocolError as ProtocolError  # where the netlayer's modules use it
from router.observe.ratelimit import RateLimitedLog

log = logging.getLogger("router.netlayer")
# A flood of one cause (refused, dropped, aborted connections) writes two lines per 10 s.
repeats = RateLimitedLog(log)

PYNETDICOM_VERSION = "3.0.4"

# The upstream code each change replaces or relies on: sha256 (first 16 hex digits) of
# `inspect.getsource()` in 3.0.4. tests/test_netlayer.py fails when any of them differs.
UPSTREAM_SOURCES = {
    "dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "dul.DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",
    "dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "dul.DULServiceProvider.send_pdu": "7cbce5da8594124e",
    "dul.DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "dul.DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "transport.AssociationSocket.recv": "6bc20a33b1b7cfe7",
    "transport.AssociationSocket.ready": "3eb58e3d39dc076d",
    "transport.AssociationServer.server_bind": "cf69278a05a5c777",
    "transport.AssociationServer.get_request": "925a4f3a3042f6e4",
    "transport.AssociationServer.shutdown": "e8e2c3a41009886d",
    "transport.AssociationServer.server_close": "3fa1b358badbe682",
    "transport.ThreadedAssociationServer.process_request_thread": "9e76e9b9c8a3d8b1",
    "transport.RequestHandler._create_association": "05c8d12b79863cdb",
    "transport.RequestHandler.handle": "034823fb4df3a874",
    "dimse.DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "dimse.DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "dimse_messages.DIMSEMessage.decode_msg": "f51c777e841a76be",
    "dimse_messages.DIMSEMessage.message_to_primitive": "f8f43d34e43450ef",
    "association.Association.__init__": "eb07516b8009ad8f",
    "association.Association.run_reactor": "ed8bbbe3b3d6ddae",
    "association.Association._run_reactor": "f28838c5559e462a",
    "association.Association.network_timeout.fset": "d1e01042128ea4a2",
    "association.Association.kill": "8f9713666a7f4cff",
    "association.Association._abort_blocking": "10b43ef8c63c6764",
    "acse.ACSE._negotiate_as_acceptor": "fffd360957c42a8e",
    "service_class.StorageServiceClass.SCP": "63afca7fc6c6e7ee",
    "events.Event.dataset_path": "7eba7552ff800249",
    "dsutils.create_file_meta": "035ed415f5aeea15",
    "dsutils.decode": "33aaa74edebf3188",
    "dimse_primitives.C_STORE.__init__": "d6deffe2538504c1",
    "dul.DULServiceProvider._send": "a850a7919e68484e",
    "fsm.DT_1": "82e5c5d4114534fa",
    "pdu.P_DATA_TF.encode": "21d920a756d945bc",
    "pdu.P_DATA_TF._encoders": "b1d9c7c6230e7bdd",
    "pdu.P_DATA_TF.from_primitive": "1e84ddf2ecfdc32e",
    "pdu_items.PresentationDataValueItem._encoders": "e385dfb266ee5ee5",
    "fsm.StateMachine.do_action": "9a883f44c7f31641",
    "pdu.PDU._generate_items": "7148fb0a4c0109f1",
    "pdu.A_ABORT_RQ.to_primitive": "8a371320d910a97e",
    "pdu_items.PresentationContextItemRQ.to_primitive": "820a8752cc816f2c",
}

MAX_ASSOCIATE_PDU = 64 * 1024  # an A-ASSOCIATE-RQ/AC is a few hundred bytes to a few KiB
MAX_SMALL_PDU = 1024  # A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 10 bytes
UNLIMITED_PDU_CAP = 16 * 1024 * 1024  # what "max_pdu: 0" (unlimited) still accepts
PDU_DEADLINE = 10.0  # seconds from a PDU's first byte to its last
MAX_COMMAND_SET = 64 * 1024
MAX_MEMORY_DATASET = 1024 * 1024  # datasets of messages other than C-STORE-RQ
MAX_MEMORY_STORE = 64 * 1024 * 1024  # a C-STORE-RQ's without STORE_RECV_CHUNKED_DATASET
SEND_QUEUE_LIMIT = 16  # P-DATA primitives waiting to be sent, per association
IDLE_WAKE = 5.0  # longest wait of an idle reactor (a safety net): real work wakes it at once
ESTABLISH_WAIT = 1.0  # a requestor's P-DATA waits this long for its own A-ASSOCIATE-AC handling
MAX_UNASSOCIATED = 128  # connections that have not (yet) sent an A-ASSOCIATE-RQ
MAX_SHOWN = 128  # characters of a peer-supplied value in a log line (then "... (N bytes)")
MAX_REASON = 256  # characters of a reason that may quote one (pynetdicom's validators do)

# A-ABORT reason (PS3.8 9.3.8): invalid PDU parameter value.
ABORT_INVALID_PARAMETER = 0x06

incoming: Path | None = None  # set by install(): where received datasets go
counter = itertools.count()


def escaped(value: str | bytes, limit: int = MAX_SHOWN) -> str:
    """`value` with control and non-ASCII characters escaped and cut to `limit`, for a log line."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")
    if len(text) > limit:
        return f"{text[:limit]}... ({len(value)} bytes)"
    return text


def reason(exc: BaseException) -> str:
    """Why an association ends, for its log line: never an exception's class name.

    A protocol error's or a validator's message (pynetdicom's say which field and value
    were refused) is escaped and cut; anything else is our bug: "internal error", its
    traceback logged at DEBUG (shown with --debug).
    """
    if isinstance(exc, ProtocolError | ValueError | TimeoutError):
        return escaped(str(exc), MAX_REASON)
    log.debug("internal error in the network layer", exc_info=exc)
    return "internal error (details with --debug)"


def peer(assoc: Association) -> str:
    """`CALLING@address` of the other side (the address alone before an A-ASSOCIATE-RQ)."""
    if not assoc.is_acceptor:
        return f"{assoc.acceptor.ae_title}@{assoc.acceptor.address}"
    primitive = assoc.requestor.primitive
    address = assoc.requestor.address or "?"
    if primitive is None:
        return str(address)
    return f"{escaped(primitive.calling_ae_title.strip())}@{address}"


def warn(assoc: Association, message: str, *args: object) -> None:
    """The one log line for an association ended here (the SCP's close handler stays quiet).

    Rate limited by cause (`warn_from`); none for a connection evicted to make room
    (`unassociated.py`), whose eviction was its line.
    """
    assoc.router_logged = True  # type: ignore[attr-defined]
    waiting = getattr(assoc, "waiting", None)
    if waiting is not None and waiting.evicted:
        return
    warn_from(peer(assoc), message, *args)


_NUMBERS = re.compile(r"[0-9]+")


def warn_from(who: str, message: str, *args: object) -> None:
    """Log `message` (its first %s is `who`), rate limited by cause.

    The cause is the message with its values but `who`, numbers masked: a flood of one
    problem from any number of peers is one cause, different problems stay apart.
    """
    cause = _NUMBERS.sub("#", " ".join([message, *map(str, args)]))[:200]
    repeats.warning(cause, message, who, *args)
