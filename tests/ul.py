"""Just enough DICOM upper layer (PS3.8) by hand to send what no well-behaved peer would."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from tests.peers import LOOPBACK

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _ae(title: bytes) -> bytes:
    return title.ljust(16, b" ")[:16]


def associate_rq(
    *,
    calling: bytes = b"HOSTILE",
    called: bytes = b"DICOM_ROUTER",
    contexts: list[tuple[int, bytes, list[bytes]]] | None = None,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ; `contexts` are (ID, abstract syntax, transfer syntaxes)."""
    if contexts is None:
        contexts = [(1, CTImageStorage.encode(), [ExplicitVRLittleEndian.encode()])]
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, syntaxes in contexts:
        body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, abstract)
        body += b"".join(_item(0x40, ts) for ts in syntaxes)
        items += _item(0x20, body)
    items += _item(0x50, _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.3.4"))
    fixed = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\0" * 32
    body = fixed + items
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF of (context ID, message control header, fragment) PDVs."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, cid, mch) + data for cid, mch, data in pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


RELEASE_RQ = struct.pack(">BBLL", 0x05, 0, 4, 0)
ABORT = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0)


def command(**elements: object) -> bytes:
    """A command set (Implicit VR Little Endian) with its group length first."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    body = fp.getvalue()
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def store_rq(sop_instance: str, message_id: int = 1) -> bytes:
    """A valid C-STORE-RQ command set for a CT instance."""
    return command(
        AffectedSOPClassUID=CTImageStorage,
        CommandField=0x0001,
        MessageID=message_id,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance,
    )


def dataset_of(path: Path) -> bytes:
    """The dataset of a Part-10 file, as it goes on the wire (the file meta stripped)."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


class Peer:
    """A raw TCP connection to the router, speaking PDUs by hand."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU's type and body; (0, b"") when the connection is closed."""
        header = self._exactly(6)
        if len(header) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBL", header)
        return kind, self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        got = b""
        try:
            while len(got) < n and (chunk := self.sock.recv(n - len(got))):
                got += chunk
        except ConnectionResetError:
            pass
        return got

    def associate(self, **kw: object) -> None:
        """Send an A-ASSOCIATE-RQ and insist on an A-ASSOCIATE-AC."""
        self.send(associate_rq(**kw))  # type: ignore[arg-type]
        kind, body = self.read_pdu()
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {kind:#x} {body[:8]!r}"

    def closed_within(self, seconds: float) -> tuple[list[int], float]:
        """The PDU types received until the router closes the connection, and when it did."""
        start = time.monotonic()
        self.sock.settimeout(seconds)
        kinds = []
        try:
            while (kind := self.read_pdu()[0]) != 0:
                kinds.append(kind)
        except TimeoutError as exc:
            raise AssertionError(f"connection still open after {seconds} s") from exc
        return kinds, time.monotonic() - start
