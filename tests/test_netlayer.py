"""router/netlayer: pinned to the pynetdicom it was written for, byte-identical on the wire."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from io import BytesIO
from typing import Any

import pynetdicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta

from router import netlayer


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
