"""Just enough DICOM upper layer (PS3.8) by hand to send valid and broken PDUs.

A raw-socket client: it builds the PDUs a real sender would (the A-ASSOCIATE-RQ through
pynetdicom's own PDU classes), sends whatever bytes it is given, and reads back PDUs
without trusting them, so that a fuzz case can classify the router's answer.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

LOOPBACK = "127.0.0.1"
CALLED = "DICOM_ROUTER"
VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# PDU types
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
# Message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment.
MCH_DATA, MCH_COMMAND, MCH_LAST = 0x00, 0x01, 0x02
# The biggest PDU we accept from the router: anything larger is itself a finding.
MAX_READ = 4 * 1024 * 1024


def associate_rq(
    contexts: list[tuple[int, str, str]],
    calling: str = "FUZZER",
    called: str = CALLED,
    max_length: int = 65536,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing (context ID, abstract syntax, transfer syntax)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    definitions = []
    for context_id, abstract, transfer in contexts:
        context = build_context(abstract, transfer)
        context.context_id = context_id
        definitions.append(context)
    primitive.presentation_context_definition_list = definitions
    max_pdu = MaximumLengthNotification()
    max_pdu.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_pdu, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length, body."""
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def pdv(context_id: int, mch: int, data: bytes) -> bytes:
    """One presentation data value item of a P-DATA-TF."""
    return struct.pack(">IBB", len(data) + 2, context_id, mch) + data


def release_rq() -> bytes:
    """A-RELEASE-RQ."""
    return pdu(RELEASE_RQ, b"\0\0\0\0")


def abort_pdu(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT."""
    return pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def command_set(**elements: object) -> bytes:
    """A command set in Implicit VR Little Endian, Command Group Length first."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    body = fp.getvalue()
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@cache
def echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ command set."""
    return command_set(
        AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=message_id,
        CommandDataSetType=0x0101,
    )


def store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set announcing a dataset."""
    return command_set(
        AffectedSOPClassUID=sop_class, CommandField=0x0001, MessageID=message_id,
        Priority=0, CommandDataSetType=0x0000, AffectedSOPInstanceUID=sop_instance,
    )


def p_data_message(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """A whole DIMSE message as P-DATA-TF PDUs, fragments no longer than `max_pdu` allows."""
    room = max(64, (max_pdu or MAX_READ) - 12)  # PDU header 6 + PDV header 6
    out = bytearray()
    for mch, data in ((MCH_COMMAND, command), (MCH_DATA, dataset)):
        if data is None:
            continue
        chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
        for n, chunk in enumerate(chunks):
            flags = mch | (MCH_LAST if n == len(chunks) - 1 else 0)
            out += pdu(P_DATA, pdv(context_id, flags, chunk))
    return bytes(out)


def decode_command(data: bytes) -> Dataset | None:
    """A received command set, or None when it does not parse."""
    try:
        fp = DicomBytesIO(data)
        fp.is_little_endian, fp.is_implicit_VR = True, True
        ds = read_dataset(cast(BinaryIO, fp), is_implicit_VR=True, is_little_endian=True)
        _ = [elem.value for elem in ds]
        return ds
    except Exception:  # anything unparsable from the router is reported, not raised
        return None


@dataclass
class Reply:
    """What the router sent back: a PDU, or 'eof', 'reset', 'timeout'."""

    kind: str
    pdu_type: int = 0
    body: bytes = b""


class Connection:
    """One TCP connection to the router, speaking raw PDUs."""

    def __init__(self, port: int, timeout: float = 5.0, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_pdu = 16384
        self.accepted: dict[int, str] = {}  # context ID -> transfer syntax
        self.last_used = 0.0  # monotonic time of the last case on this association
        self._buffer = bytearray()

    def close(self) -> None:
        """Close the socket (the router sees EOF or a reset)."""
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send bytes; False when the router has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, n: int, deadline: float) -> str:
        while len(self._buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return "timeout"
            except OSError:
                return "reset"
            if not chunk:
                return "eof"
            self._buffer += chunk
        return ""

    def read_pdu(self, timeout: float) -> Reply:
        """The next PDU the router sends, or why there is none within `timeout`."""
        deadline = time.monotonic() + timeout
        if why := self._fill(6, deadline):
            return Reply(why)
        pdu_type, _, length = struct.unpack(">BBI", self._buffer[:6])
        if length > MAX_READ:
            return Reply("oversized", pdu_type)
        if why := self._fill(6 + length, deadline):
            return Reply(why)
        body = bytes(self._buffer[6 : 6 + length])
        del self._buffer[: 6 + length]
        return Reply("pdu", pdu_type, body)

    def read_command(self, timeout: float) -> Dataset | Reply:
        """The next complete command set the router sends, or the PDU/event that came instead."""
        deadline = time.monotonic() + timeout
        fragments = bytearray()
        while True:
            reply = self.read_pdu(max(0.0, deadline - time.monotonic()))
            if reply.kind != "pdu" or reply.pdu_type != P_DATA:
                return reply
            body, last = reply.body, False
            while len(body) >= 6:
                length, _context, mch = struct.unpack(">IBB", body[:6])
                fragments += body[6 : 4 + length]
                body = body[4 + length :]
                last = last or bool(mch & MCH_LAST and mch & MCH_COMMAND)
            if last:
                command = decode_command(bytes(fragments))
                return command if command is not None else Reply("bad-command", P_DATA)

    def associate(self, rq: bytes, timeout: float) -> Reply:
        """Send an A-ASSOCIATE-RQ; on A-ASSOCIATE-AC note the accepted contexts and max PDU."""
        if not self.send(rq):
            return Reply("reset")
        reply = self.read_pdu(timeout)
        if reply.kind == "pdu" and reply.pdu_type == ASSOCIATE_AC:
            self._parse_ac(reply.body)
        return reply

    def _parse_ac(self, body: bytes) -> None:
        items = body[68:]
        while len(items) >= 4:
            item_type, _, length = struct.unpack(">BBH", items[:4])
            value = items[4 : 4 + length]
            if item_type == 0x21 and len(value) >= 4 and value[2] == 0:
                syntax = value[8:].rstrip(b"\0").decode("ascii", "replace")
                self.accepted[value[0]] = syntax
            elif item_type == 0x50:
                sub = value
                while len(sub) >= 4:
                    sub_type, _, sub_length = struct.unpack(">BBH", sub[:4])
                    if sub_type == 0x51 and sub_length == 4:
                        self.max_pdu = struct.unpack(">I", sub[4:8])[0]
                    sub = sub[4 + sub_length :]
            items = items[4 + length :]
