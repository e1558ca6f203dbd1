"""router/netlayer: pinned to the pynetdicom it was written for, byte-identical on the wire."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import struct
import warnings
from io import BytesIO
from typing import Any

import pynetdicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from router.net import netlayer


def upstream(qualified: str) -> Any:
    """The pynetdicom object named `module.Class.attr` (a property's getter for properties)."""
    module, *path = qualified.split(".")
    obj: Any = importlib.import_module(f"pynetdicom.{module}")
    for name in path:
        obj = inspect.getattr_static(obj, name) if isinstance(obj, type) else getattr(obj, name)
    return obj.fget if isinstance(obj, property) else obj  # "x.fset" names a setter


def test_installed_pynetdicom_is_the_version_the_changes_were_written_for() -> None:
    """An upgrade of pynetdicom must be a deliberate review of router/netlayer."""
    assert pynetdicom.__version__ == netlayer.PYNETDICOM_VERSION


@pytest.mark.parametrize("qualified", sorted(netlayer.UPSTREAM_SOURCES))
def test_upstream_code_replaced_or_relied_on_is_unchanged(qualified: str) -> None:
    """Each upstream function the changes replace or rely on is as they were written for."""
    source = inspect.getsource(upstream(qualified))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == netlayer.UPSTREAM_SOURCES[qualified], f"{qualified} changed upstream"


UIDS = [
    (CTImageStorage, "1.2.3", ExplicitVRLittleEndian),  # odd lengths: padded
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.34", JPEG2000Lossless),  # even lengths
    ("1.2.840.10008.5.1.4.1.1.1.1.1.1", "9" * 64, "1.2.840.10008.1.2"),
]


@pytest.mark.parametrize(("sop_class", "sop_instance", "ts"), UIDS)
def test_file_meta_is_byte_identical_to_pynetdicoms(
    sop_class: str, sop_instance: str, ts: str
) -> None:
    """The received file's preamble and group 2 are what pynetdicom itself would write."""
    fp = BytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=ts
    )
    write_file_meta_info(fp, meta)  # type: ignore[arg-type]
    assert netlayer.file_meta(sop_class, sop_instance, ts) == fp.getvalue()


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC210, 0x0124])
@pytest.mark.parametrize(("sop_class", "sop_instance", "_ts"), UIDS)
def test_store_response_is_byte_identical_to_pynetdicoms(
    status: int, sop_class: str, sop_instance: str, _ts: str
) -> None:
    """A C-STORE-RSP's command set is what pynetdicom's primitive_to_message encodes."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((_context, data),) = pdata.presentation_data_value_list
    assert data[:1] == b"\x03"  # command, last fragment
    assert netlayer.store_rsp_command(sop_class, 7, status, sop_instance) == data[1:]


def test_escaped_shows_control_characters_as_escapes() -> None:
    """A hostile AE title is logged with its control bytes escaped, never raw."""
    assert netlayer.escaped("EVIL\x1b[2J\n") == "EVIL\\x1b[2J\\n"


def _upstream_store_request(primitive: C_STORE) -> C_STORE:
    """What pynetdicom makes of the C-STORE-RQ it encodes for `primitive`."""
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.command_set = decode(BytesIO(encode(message.command_set, True, True)), True, True)
    message.data_set = BytesIO()  # as received: the dataset went to a file
    decoded = message.message_to_primitive()
    assert isinstance(decoded, C_STORE)
    return decoded


def _command_bytes(primitive: C_STORE) -> bytes:
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    raw = encode(message.command_set, True, True)
    assert raw is not None
    return raw


@pytest.mark.parametrize("priority", [0, 1, 2])
@pytest.mark.parametrize(("sop_class", "sop_instance", "_ts"), UIDS)
def test_store_request_decodes_as_pynetdicom_does(
    sop_class: str, sop_instance: str, _ts: str, priority: int
) -> None:
    """A plain C-STORE-RQ's primitive: every parameter equal to upstream's decoding."""
    rq = C_STORE()
    rq.MessageID = 65535
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = sop_instance
    rq.Priority = priority
    rq.DataSet = BytesIO(b"\0" * 8)
    fast, slow = netlayer.store_request(_command_bytes(rq)), _upstream_store_request(rq)
    assert fast is not None
    names = (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "Priority",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
        "Status",
        "MessageIDBeingRespondedTo",
        "ErrorComment",
        "OffendingElement",
    )
    assert [getattr(fast, n) for n in names] == [getattr(slow, n) for n in names]
    assert type(fast.AffectedSOPInstanceUID) is type(slow.AffectedSOPInstanceUID)
    assert fast.DataSet.getvalue() == slow.DataSet.getvalue() == b""  # type: ignore[union-attr]


def test_store_request_leaves_a_move_originator_to_pynetdicom() -> None:
    """A C-STORE-RQ of a C-MOVE (Move Originator elements) takes upstream's decoding."""
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = 1, CTImageStorage, "1.2"
    rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = "MOVESCU", 3
    rq.DataSet = BytesIO(b"\0" * 8)
    assert netlayer.store_request(_command_bytes(rq)) is None


@pytest.mark.parametrize(
    ("what", "cut"),
    [("truncated", -3), ("no instance UID", None)],
)
def test_store_request_leaves_odd_command_sets_to_pynetdicom(what: str, cut: int | None) -> None:
    """A truncated command set, or one missing an element, is not decoded here."""
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = 1, CTImageStorage, "1.2"
    rq.DataSet = BytesIO(b"\0" * 8)
    raw = _command_bytes(rq)
    raw = raw[:cut] if cut else raw[: raw.index(b"\x00\x00\x00\x10")]  # drop (0000,1000)
    assert netlayer.store_request(raw) is None, what


def test_store_request_validates_uids_as_pynetdicom_does() -> None:
    """A UID over 64 characters raises as the primitive's setter does upstream."""
    raw = _command_bytes_with_instance("1." + "2" * 70)
    with pytest.raises(ValueError, match="Affected SOP Instance UID"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warning on the length, as upstream
        netlayer.store_request(raw)


def _command_bytes_with_instance(uid: str) -> bytes:
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = 1, CTImageStorage, "1.2"
    rq.DataSet = BytesIO(b"\0" * 8)
    raw = _command_bytes(rq)
    old = b"1.2\0"
    new = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    at = raw.rindex(old)
    head = raw[: at - 4] + struct.pack("<L", len(new)) + new
    body = head[12:]  # after the group length element
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


@pytest.mark.parametrize(
    "pdvs",
    [
        [(1, b"\x03" + b"x" * 99)],
        [(1, b"\x02" + b"y" * 16000), (3, b"\x00z")],
        [(255, b"\x01")],
    ],
)
def test_p_data_tf_is_byte_identical_to_pynetdicoms(pdvs: list[tuple[int, bytes]]) -> None:
    """A P-DATA-TF's bytes are what pynetdicom's PDU.encode makes of it."""
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[cid, data] for cid, data in pdvs]  # type: ignore[misc]
    pdu = P_DATA_TF(primitive)
    assert netlayer.encode_p_data(pdu) == pdu.encode()
