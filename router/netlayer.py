"""Everything the router changes in pynetdicom's network layer, in one place.

Written for pynetdicom 3.0.4 (`PYNETDICOM_VERSION`): `install()` refuses any other
version, and tests/test_netlayer.py pins the source of every upstream function replaced
here, so that an upgrade fails loudly instead of silently running half-patched code.
Line numbers are pynetdicom v3.0.4's. Each change, why, and what it replaces:

1. `RouterDUL._read_pdu_data` replaces `dul.py:258-336` (`DULServiceProvider._read_pdu_data`)
   and `transport.py:595-610` (`AssociationSocket.recv`). Limits before allocation: an
   A-ASSOCIATE-RQ/AC above `MAX_ASSOCIATE_PDU`, a P-DATA-TF above the maximum PDU length we
   advertised, any other PDU above `MAX_SMALL_PDU`: A-ABORT, one log line, connection closed
   (upstream allocated whatever the header claimed). A PDU must be complete within
   `PDU_DEADLINE` of its first byte (upstream: one socket timeout per 4 KiB read, so a
   trickle held a slot forever). One `recv_into` a buffer of the PDU's size (upstream: 4 KiB
   `recv` calls extending a bytearray), P-DATA-TF items parsed as memoryviews (no copy)
   when no EVT_DATA_RECV/EVT_PDU_RECV handler is bound.
2. `RouterDUL.run_reactor` replaces `dul.py:390-448`: instead of sleeping 1 ms whenever idle
   it waits in `select` on the socket and a wake-up socketpair, written to by `send_pdu`,
   `kill_dul` and any other thread's queue put (at most `IDLE_WAKE` s, or the ARTIM
   timer's remaining time). An exception in the state machine (`do_action`, which upstream
   ran outside the `try`) aborts the association with one log line instead of killing the
   thread with a traceback while the peer waits.
3. `RouterDUL.send_pdu` adds backpressure to `dul.py:472-496`: at most `SEND_QUEUE_LIMIT`
   primitives wait to be sent (upstream queued a whole chunked C-STORE, ~100-250 MB, in RAM).
   `RouterDUL.stop_dul` replaces `dul.py:498-514`, which spun on `time.sleep(0)`.
4. `RouterDIMSE.receive_primitive` replaces `dimse.py:248-308` and the decoding in
   `dimse_messages.py:440-511` (`DIMSEMessage.decode_msg`): a C-STORE-RQ's dataset goes to
   a file we create (`os.open` in `incoming/`, file meta packed with `struct`, byte-identical
   to `create_file_meta` + `write_file_meta_info`; no per-PDV flush); other datasets stay
   in memory below `MAX_MEMORY_DATASET`; a command set above `MAX_COMMAND_SET`, dataset
   fragments before a command, an unknown command field, an undecodable command set or a
   context ID that was not accepted end in A-ABORT with one log line (upstream: a thread
   traceback, or unbounded memory). A write error (ENOSPC) drains the rest of the dataset
   and hands the C-STORE on with `receive_error` set, so the sender gets 0xA700. A partial
   file, or a received one never handed to the handler, is removed when the association
   ends, however it ends (upstream left them in the temp folder).
5. `RouterDIMSE.send_msg` replaces `dimse.py:310-336` for a plain C-STORE-RSP (status only):
   the command set is packed with `struct`, byte-identical to `primitive_to_message` +
   `encode_msg`, which encoded it twice through pydicom.
6. `RouterAssociation._run_reactor` replaces `association.py:701-776`: it waits on an event
   kicked by the DIMSE message queue, the DUL's user queue and the DUL's end, instead of
   sleeping 1 ms per turn; a pause (`_reactor_checkpoint.clear()`) is checked again after
   the reactor marks itself running, which closes the race in which a `send_c_store` saw a
   stale `_is_paused` and the reactor stole its C-STORE-RSP. `run_reactor` is wrapped so
   that an exception during negotiation (e.g. a presentation context without a transfer
   syntax) aborts instead of leaving the peer waiting.
7. `RouterAE.active_associations` (used by `acse.py:379-381` for `maximum_associations`)
   counts only associations whose A-ASSOCIATE-RQ arrived: connections that never
   associate cannot lock senders out. `RouterServer` (replaces `transport.py:930-1089` in
   part): accepts only in the accept thread (TLS handshakes run in the connection's thread),
   sets TCP_NODELAY, caps connections that have not associated at `MAX_UNASSOCIATED`,
   listens with a `socket.SOMAXCONN` backlog (socketserver's default is 5), optionally
   binds with SO_REUSEPORT, and its `shutdown` does not call `ae._servers.remove`
   (`transport.py:1040`, which raised because `make_server` never registered it).
8. `threading.excepthook`: a pynetdicom thread that still dies logs one line through our
   logger instead of a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pynetdicom
import pynetdicom.ae
import pynetdicom.association
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import ThreadedAssociationServer

from router.errors import StartupError

log = logging.getLogger("router.netlayer")

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
    "dimse.DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "dimse.DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "dimse_messages.DIMSEMessage.decode_msg": "f51c777e841a76be",
    "dimse_messages.DIMSEMessage.message_to_primitive": "f8f43d34e43450ef",
    "association.Association.__init__": "eb07516b8009ad8f",
    "association.Association.run_reactor": "ed8bbbe3b3d6ddae",
    "association.Association._run_reactor": "f28838c5559e462a",
    "association.Association.kill": "8f9713666a7f4cff",
    "acse.ACSE._negotiate_as_acceptor": "fffd360957c42a8e",
    "service_class.StorageServiceClass.SCP": "63afca7fc6c6e7ee",
    "events.Event.dataset_path": "7eba7552ff800249",
    "dsutils.create_file_meta": "035ed415f5aeea15",
}

MAX_ASSOCIATE_PDU = 64 * 1024  # an A-ASSOCIATE-RQ/AC is a few hundred bytes to a few KiB
MAX_SMALL_PDU = 1024  # A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 10 bytes
UNLIMITED_PDU_CAP = 16 * 1024 * 1024  # what "max_pdu: 0" (unlimited) still accepts
PDU_DEADLINE = 10.0  # seconds from a PDU's first byte to its last
MAX_COMMAND_SET = 64 * 1024
MAX_MEMORY_DATASET = 1024 * 1024  # datasets of messages other than C-STORE-RQ
SEND_QUEUE_LIMIT = 16  # P-DATA primitives waiting to be sent, per association
IDLE_WAKE = 1.0  # longest wait of an idle reactor; real work wakes it at once
MAX_UNASSOCIATED = 128  # connections that have not (yet) sent an A-ASSOCIATE-RQ

# A-ABORT reason (PS3.8 9.3.8): invalid PDU parameter value.
_ABORT_INVALID_PARAMETER = 0x06

_incoming: Path | None = None
_counter = itertools.count()
_installed = False


class ProtocolError(Exception):
    """A peer broke the upper layer or DIMSE protocol: the association is aborted."""


def install(incoming: Path) -> None:
    """Put the router's changes in place; received datasets go to `incoming`."""
    global _incoming, _installed
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        raise StartupError(
            f"pynetdicom {pynetdicom.__version__} is installed; router/netlayer.py was "
            f"written for {PYNETDICOM_VERSION} exactly"
        )
    _incoming = incoming
    if _installed:
        return
    # The association module builds its providers from these globals, and the AE and the
    # server's request handler look Association up in their modules at call time.
    pynetdicom.association.DULServiceProvider = RouterDUL  # type: ignore[attr-defined]
    pynetdicom.association.DIMSEServiceProvider = RouterDIMSE  # type: ignore[attr-defined]
    pynetdicom.association.Association = RouterAssociation  # type: ignore[misc]
    pynetdicom.ae.Association = RouterAssociation  # type: ignore[attr-defined]
    threading.excepthook = _log_thread_death
    _installed = True


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread else "?"
    log.error("thread %s ended by %s: %s", name, args.exc_type.__name__, args.exc_value)


def escaped(value: str | bytes) -> str:
    """`value` with control and non-ASCII characters escaped, for a log line."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return value.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")


def _peer(assoc: Association) -> str:
    return f"{assoc.requestor.address or '?'}" if assoc.is_acceptor else str(assoc.acceptor.address)


def _warn(assoc: Association, message: str, *args: object) -> None:
    """The one log line for an association ended here (the SCP's close handler stays quiet)."""
    assoc.router_logged = True  # type: ignore[attr-defined]
    log.warning(message, _peer(assoc), *args)


# --------------------------------------------------------------------------- queues


class _KickQueue(queue.Queue[Any]):
    """A queue whose every put also calls `kick` (wakes whoever waits for work)."""

    def __init__(self, kick: Any) -> None:
        super().__init__()
        self._kick = kick

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._kick()


# --------------------------------------------------------------------------- DUL


class _PData:
    """A received P-DATA-TF whose PDVs are memoryviews into the PDU buffer (change 1)."""

    __slots__ = ("presentation_data_value_list",)

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        self.presentation_data_value_list = items

    def to_primitive(self) -> _PData:
        return self


class RouterDUL(DULServiceProvider):
    """pynetdicom's DUL with limits, deadlines, event-driven wake-ups and backpressure."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._run_loop_delay = 0.0
        self._space = threading.Condition()
        self.to_provider_queue = _KickQueue(self._wake_from_other)
        self.event_queue = _KickQueue(self._wake_from_other)
        self.to_user_queue = _KickQueue(self._kick_assoc)

    # -- wake-ups

    def wake(self) -> None:
        """Wake the reactor from its wait."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _wake_from_other(self) -> None:
        if threading.current_thread() is not self:
            self.wake()

    def _kick_assoc(self) -> None:
        kick = getattr(self.assoc, "kick", None)
        if kick is not None:
            kick()

    def _wait(self) -> None:
        sock = self.socket.socket if self.socket is not None else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        timeout = IDLE_WAKE
        if self.artim_timer._start_time is not None and self.artim_timer._end_time is None:
            timeout = max(0.0, min(timeout, self.artim_timer.remaining))
        fds: list[Any] = [self._wake_r]
        if sock is not None and sock.fileno() >= 0:
            fds.append(sock)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    # -- reactor (change 2)

    def run_reactor(self) -> None:
        """The DUL thread: receive, send and run the state machine, waiting on events."""
        self._idle_timer.start()
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait()
                    continue
                except Exception as exc:
                    self._hard_abort(f"{type(exc).__name__}: {exc}")
                    return
                try:
                    self.state_machine.do_action(event)
                except Exception as exc:
                    self._hard_abort(f"{type(exc).__name__}: {exc}")
                    return
                self._notify_space()
        finally:
            cast(RouterDIMSE, self.assoc.dimse).discard_partial()
            self._kick_assoc()
            with self._space:
                self._space.notify_all()
            self._wake_r.close()
            self._wake_w.close()

    def _hard_abort(self, why: str) -> None:
        """Send an A-ABORT outside the state machine (its state is now unknown) and stop."""
        _warn(self.assoc, "association with %s aborted: %s", why)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        if self.socket is not None and self.socket.socket is not None:
            with contextlib.suppress(Exception):
                self.socket.socket.sendall(abort.encode())
            self.socket.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        if self.assoc.requestor.primitive is None:
            self.to_user_queue.put(None)  # type: ignore[arg-type]  # the wait for an RQ

    def kill_dul(self) -> None:
        """Stop the reactor, now."""
        self._kill_thread = True
        self.wake()

    def stop_dul(self) -> bool:
        """Stop the reactor if in Sta1 (idle); True when it has stopped."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join(PDU_DEADLINE)
        return True

    # -- sending (change 3)

    def send_pdu(self, primitive: Any) -> None:
        """Queue `primitive` for sending; blocks while `SEND_QUEUE_LIMIT` are waiting."""
        with self._space:
            while (
                self.to_provider_queue.qsize() >= SEND_QUEUE_LIMIT
                and self.is_alive()
                and not self._kill_thread
            ):
                self._space.wait(0.5)
        super().send_pdu(primitive)

    def _notify_space(self) -> None:
        if self.to_provider_queue.qsize() < SEND_QUEUE_LIMIT:
            with self._space:
                self._space.notify_all()

    # -- receiving (change 1)

    def _pdu_limit(self, pdu_type: int) -> int:
        if pdu_type in (0x01, 0x02):
            return MAX_ASSOCIATE_PDU
        if pdu_type == 0x04:
            mine = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
            limit = int(mine.maximum_length or 0)
            return limit if limit > 0 else UNLIMITED_PDU_CAP
        return MAX_SMALL_PDU

    def _recv_into(self, buf: memoryview, deadline: float) -> int:
        """Fill `buf` from the socket before `deadline`; the count read (short on EOF)."""
        assert self.socket is not None
        sock = self.socket.socket
        assert sock is not None
        got, stall = 0, self.network_timeout or PDU_DEADLINE
        while got < len(buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"PDU not complete within {PDU_DEADLINE:.0f} s")
            sock.settimeout(min(left, stall))  # a silent peer is also a stalled one
            try:
                n = sock.recv_into(buf[got:])
            except TimeoutError:
                if left <= stall:
                    raise TimeoutError(f"PDU not complete within {PDU_DEADLINE:.0f} s") from None
                raise TimeoutError(f"nothing received for {stall:.0f} s") from None
            if n == 0:
                break
            got += n
        return got

    def _read_pdu_data(self) -> None:
        assert self.socket is not None
        header = bytearray(6)
        deadline = time.monotonic() + PDU_DEADLINE
        try:
            if self._recv_into(memoryview(header), deadline) < 6:
                self.event_queue.put("Evt17")
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                # As upstream: Evt19, the state machine's A-ABORT (AA-1/AA-8), then close.
                _warn(self.assoc, "association with %s aborted: unknown PDU type 0x%02X", pdu_type)
                self.event_queue.put("Evt19")
                return
            limit = self._pdu_limit(pdu_type)
            if length > limit:
                self._reject_pdu(
                    f"PDU type 0x{pdu_type:02X} claims {length} bytes, above the limit {limit}"
                )
                return
            data = bytearray(6 + length)
            data[:6] = header
            if self._recv_into(memoryview(data)[6:], deadline) < length:
                self._reject_pdu(f"connection closed inside a PDU ({length} bytes announced)")
                return
        except (OSError, TimeoutError) as exc:
            if self.assoc.requestor.primitive is not None or not isinstance(exc, TimeoutError):
                self.event_queue.put("Evt17")
                if isinstance(exc, TimeoutError):
                    _warn(self.assoc, "connection from %s dropped: %s", exc)
                return
            self._reject_pdu(str(exc))
            return
        try:
            pdu, event = self._decode(pdu_type, data)
        except Exception as exc:
            _warn(self.assoc, "association with %s aborted: undecodable PDU (%s)", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _decode(self, pdu_type: int, data: bytearray) -> tuple[Any, str]:
        if pdu_type == 0x04 and not (
            self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            view, items, offset, end = memoryview(data), [], 6, len(data)
            while offset < end:
                if offset + 6 > end:
                    raise ProtocolError("truncated PDV item")
                (item_length,) = struct.unpack_from(">L", data, offset)
                if item_length < 2 or offset + 4 + item_length > end:
                    raise ProtocolError(f"PDV item length {item_length} outside the PDU")
                items.append((data[offset + 4], view[offset + 5 : offset + 4 + item_length]))
                offset += 4 + item_length
            if not items:
                raise ProtocolError("P-DATA-TF without a PDV item")
            return _PData(items), "Evt10"
        if pdu_type == 0x01 and len(data) >= 42:
            self._set_aside_ae_titles(data)
        return cast(tuple[Any, str], DULServiceProvider._decode_pdu(self, data))

    def _set_aside_ae_titles(self, data: bytearray) -> None:
        """Replace AE titles pynetdicom would refuse to decode; the SCP rejects them.

        pynetdicom raises on control characters in an AE title, which ended the
        association with an A-ABORT; the standard answer is A-ASSOCIATE-RJ.
        """
        for offset, which in ((10, "called"), (26, "calling")):
            raw = bytes(data[offset : offset + 16])
            if any(b < 0x20 or b >= 0x7F or b == 0x5C for b in raw):
                hostile = getattr(self.assoc, "hostile_ae_titles", {})
                hostile[which] = raw.rstrip(b" ")
                self.assoc.hostile_ae_titles = hostile  # type: ignore[attr-defined]
                data[offset : offset + 16] = b"INVALID".ljust(16)

    def _reject_pdu(self, why: str) -> None:
        """Abort at once, closing the connection, for a PDU we will not read (one log line)."""
        _warn(self.assoc, "connection from %s aborted: %s", why)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = _ABORT_INVALID_PARAMETER
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.settimeout(1.0)
                sock.sendall(abort.encode())
        if self.socket is not None:
            self.socket.close()  # puts Evt17: the state machine goes back to idle
        if self.assoc.requestor.primitive is None and self.assoc.is_acceptor:
            self.to_user_queue.put(None)  # type: ignore[arg-type]  # the wait for an RQ


# --------------------------------------------------------------------------- DIMSE

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


def store_rsp_command(
    sop_class: str, message_id: int, status: int, sop_instance: str
) -> bytes:
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


def _check_command_structure(data: bytearray) -> None:
    """Group 0000 elements whose lengths stay inside the command set (pydicom would warn)."""
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise ProtocolError("truncated command set")
        group, _element, length = struct.unpack_from("<HHL", data, offset)
        if group != 0 or offset + 8 + length > len(data):
            raise ProtocolError("malformed command set")
        offset += 8 + length


class _Received:
    """A received dataset's file, as pynetdicom's SCP expects it (`close()`, `name`)."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)

    def close(self) -> None:
        """Nothing to close: the file was closed when its last fragment arrived."""


class RouterDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with bounded, file-backed decoding (changes 4 and 5)."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self.msg_queue = _KickQueue(self._kick)
        self._command = bytearray()
        self._pending: DIMSEMessage | None = None  # command decoded, dataset arriving
        self._memory: BytesIO | None = None
        self._fd = -1
        self._path: Path | None = None
        self._error: str | None = None
        self._broken = False
        self._lock = threading.Lock()

    def _kick(self) -> None:
        kick = getattr(self.assoc, "kick", None)
        if kick is not None:
            kick()

    # -- receiving

    def receive_primitive(self, primitive: Any) -> None:
        """Decode one P-DATA's PDVs; abort the association on a protocol violation."""
        if self._broken:
            return
        try:
            for context_id, data in primitive.presentation_data_value_list:
                self._pdv(context_id, data)
        except ProtocolError as exc:
            self._broken = True
            self.discard_partial()
            _warn(self.assoc, "association with %s aborted: %s", exc)
            self.dul.event_queue.put("Evt19")  # AA-8: A-ABORT to the peer, then close

    def _pdv(self, context_id: int, data: bytes | memoryview) -> None:
        if len(data) < 1:
            raise ProtocolError("empty PDV")
        control = data[0]
        if control & 1:
            if self._pending is not None:
                raise ProtocolError("command fragment inside a dataset")
            self._command += data[1:]
            if len(self._command) > MAX_COMMAND_SET:
                raise ProtocolError(f"command set above {MAX_COMMAND_SET} bytes")
            if control & 2:
                self._command_done(context_id)
            return
        message = self._pending
        if message is None:
            raise ProtocolError("dataset fragment before a command")
        if context_id != message.context_id:
            raise ProtocolError("dataset fragment on another presentation context")
        self._write(data[1:])
        if control & 2:
            self._finish(message)

    def _command_done(self, context_id: int) -> None:
        if context_id not in self.assoc._accepted_cx:
            raise ProtocolError(f"presentation context {context_id} was not accepted")
        _check_command_structure(self._command)
        try:
            command_set = decode(BytesIO(bytes(self._command)), True, True)
            field = int(command_set.CommandField)
            data_type = int(command_set.CommandDataSetType)
        except Exception as exc:
            raise ProtocolError(f"undecodable command set ({type(exc).__name__})") from exc
        self._command = bytearray()
        if field not in _MESSAGE_TYPES:
            raise ProtocolError(f"unknown command field 0x{field:04X}")
        message = _MESSAGE_TYPES[field][1]()
        message.command_set = command_set
        message.context_id = context_id
        if data_type == 0x0101:
            self._finish(message)
            return
        self._pending = message
        if isinstance(message, C_STORE_RQ):
            self._open_file(message, context_id)
        else:
            self._memory = BytesIO()

    def _open_file(self, message: DIMSEMessage, context_id: int) -> None:
        cs = message.command_set
        assert _incoming is not None, "netlayer.install() was not called"
        try:
            meta = file_meta(
                str(cs.AffectedSOPClassUID),
                str(cs.AffectedSOPInstanceUID),
                str(self.assoc._accepted_cx[context_id].transfer_syntax[0]),
            )
        except Exception as exc:
            raise ProtocolError(f"unusable C-STORE-RQ command set ({exc})") from exc
        path = _incoming / f"{os.getpid()}-{next(_counter)}.dcm"
        with self._lock:
            self._path = path
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except OSError as exc:
                self._path = None
                self._error = f"cannot receive into {path.parent}: {exc.strerror}"
                return
        self._write(meta)

    def _write(self, data: bytes | memoryview) -> None:
        if self._memory is not None:
            if self._memory.tell() + len(data) > MAX_MEMORY_DATASET:
                raise ProtocolError(f"non-storage dataset above {MAX_MEMORY_DATASET} bytes")
            self._memory.write(data)
            return
        if self._fd < 0:
            return  # draining after a write error
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._error = f"cannot write the received dataset: {exc.strerror}"
            if exc.errno != errno.ENOSPC:
                log.warning("%s", self._error)
            self.discard_partial()

    def _finish(self, message: DIMSEMessage) -> None:
        received: Path | None = None
        error = self._error
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                received, self._path = self._path, None
        if self._memory is not None:
            message.data_set = self._memory
        self._pending, self._memory, self._error = None, None, None
        try:
            primitive = message.message_to_primitive()
        except Exception as exc:
            if received is not None:
                received.unlink(missing_ok=True)
            raise ProtocolError(f"invalid DIMSE message ({exc})") from exc
        if isinstance(primitive, C_STORE) and isinstance(message, C_STORE_RQ):
            primitive._dataset_path = received
            primitive._dataset_file = _Received(received) if received else None  # type: ignore[assignment]
            primitive.receive_error = error  # type: ignore[attr-defined]
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        if isinstance(primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, primitive.MessageIDBeingRespondedTo)] = primitive
        elif isinstance(primitive, N_EVENT_REPORT) and primitive.is_valid_request:
            threading.Thread(target=self.assoc._serve_request, args=(primitive, context_id)).start()
        else:
            self.msg_queue.put((context_id, primitive))  # type: ignore[arg-type]

    def discard_partial(self) -> None:
        """Close and remove a dataset file still being received."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            if self._path is not None:
                self._path.unlink(missing_ok=True)
                self._path = None

    def discard_unserved(self) -> None:
        """Remove the files of received C-STOREs that no handler will see."""
        while True:
            try:
                _, primitive = self.msg_queue.get(block=False)
            except queue.Empty:
                return
            path = getattr(primitive, "_dataset_path", None)
            if isinstance(path, Path):
                path.unlink(missing_ok=True)

    # -- sending (change 5)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Encode and send a DIMSE message; a plain C-STORE-RSP without pydicom."""
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.AffectedSOPClassUID
            and primitive.AffectedSOPInstanceUID
            and primitive.Status is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = store_rsp_command(
                str(primitive.AffectedSOPClassUID),
                int(primitive.MessageIDBeingRespondedTo),
                int(primitive.Status),
                str(primitive.AffectedSOPInstanceUID),
            )
            peer_max = self.maximum_pdu_size
            if not peer_max or len(command) + 7 <= peer_max:
                pdata = P_DATA()
                pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


# --------------------------------------------------------------------------- association


class RouterAssociation(Association):
    """pynetdicom's Association with an event-driven reactor (change 6)."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        self._work = threading.Event()
        super().__init__(ae, mode)

    def kick(self) -> None:
        """Wake the reactor: a message, a release or abort, or the DUL's end."""
        self._work.set()

    def kill(self) -> None:
        """Kill the association thread (and wake its reactor to notice)."""
        self._work.set()
        super().kill()

    def run_reactor(self) -> None:
        """The association thread: abort rather than die when negotiation raises."""
        try:
            super().run_reactor()
        except Exception as exc:
            _warn(self, "association with %s aborted: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                self.abort()
            self.kill()
            if self._server is not None and self.dul.socket and self.dul.socket.socket:
                self._server.shutdown_request(self.dul.socket.socket)
        finally:
            cast(RouterDIMSE, self.dimse).discard_unserved()

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                continue  # paused again before we marked ourselves running: yield to it
            self._work.clear()
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                continue
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
            timer = self.dul._idle_timer
            wait = IDLE_WAKE if timer.timeout is None else min(IDLE_WAKE, timer.remaining)
            self._is_paused = True  # waiting consumes nothing: a pauser may go ahead
            self._work.wait(max(wait, 0.0))


# --------------------------------------------------------------------------- server


def requested(assoc: Association) -> bool:
    """True once an acceptor's A-ASSOCIATE-RQ has arrived (or for a requestor)."""
    return assoc.is_requestor or assoc.requestor.primitive is not None


class RouterAE(ApplicationEntity):
    """An AE whose association limit counts only associations that were requested."""

    @property
    def active_associations(self) -> list[Association]:
        """The associations that count against `maximum_associations` (change 7)."""
        return [a for a in super().active_associations if requested(a)]


class RouterServer(ThreadedAssociationServer):
    """Accepts in one thread, prepares each socket (and TLS) in its own (change 7)."""

    request_queue_size = socket.SOMAXCONN
    stall_timeout: float = 60.0
    tls: ssl.SSLContext | None = None
    reuse_port = False

    def server_bind(self) -> None:
        """Bind, with SO_REUSEPORT when several workers share the port."""
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Only accept: a TLS handshake here would let one silent client block all."""
        assert self.socket is not None
        return self.socket.accept()

    def connections(self) -> list[Association]:
        """Every association of this server, requested or not."""
        return [
            t for t in threading.enumerate() if isinstance(t, Association) and t._server is self
        ]

    def process_request(self, request: Any, client_address: Any) -> None:
        """Refuse a connection beyond `MAX_UNASSOCIATED` that have not associated."""
        waiting = sum(1 for a in self.connections() if not requested(a))
        if waiting >= MAX_UNASSOCIATED:
            log.warning(
                "connection from %s refused: %d connections have not associated",
                client_address[0],
                waiting,
            )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Set socket options and do the TLS handshake, then hand over to pynetdicom."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.stall_timeout)
            if self.tls is not None:
                request.settimeout(PDU_DEADLINE)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(self.stall_timeout)
        except (OSError, ssl.SSLError) as exc:
            log.warning("connection from %s dropped: %s", client_address[0], exc)
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        """Stop serve_forever (pynetdicom's own also unregisters from the AE: it never was)."""
        socketserver.BaseServer.shutdown(self)

    def server_close(self) -> None:
        """Close the listening socket only (the shared one must not be shut down)."""
        if self.socket is not None:
            self.socket.close()


def shutdown_socket(assoc: Association) -> None:
    """Break whatever read the association's DUL is blocked in."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
