"""The storage SCP under hostile input (design §5, §7): bad data, tag values, PDUs, stalls, size.

Each test checks what the sender gets, what is (not) on disk, and that the daemon
serves on. Raw-socket senders speak just enough DICOM upper layer (PS3.8) by hand.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct, make_instance, make_multiframe
from tests.peers import LOOPBACK, AssociationAborted, echoscu, pyn_store, storescu
from tests.test_scp import archived, kept, module_daemon, rule_file

pytestmark = pytest.mark.interop

MiB = 1024 * 1024
NETWORK_TIMEOUT = 2.0  # listen.network_timeout in rule_file()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """One daemon storing everything under ARCHIVE, with network_timeout 2 s."""
    yield from module_daemon(tmp_path_factory, "hostile", rule_file())


# --------------------------------------------------------------------------- raw DICOM UL


def associate_rq(port: int, calling: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing CT Image Storage in Explicit VR Little Endian."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "DICOM_ROUTER"
    context = build_context(CTImageStorage, ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the peer sends until it closes (EOF or reset); and when that was.

    Fails the test if the connection is still open after `timeout` seconds.
    """
    start = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the router kept the connection open for more than {timeout} s")
    return got, time.monotonic() - start


def store_meanwhile(port: int, source: Path, out: list[list[int]]) -> threading.Thread:
    """Run a storescu of `source` in a thread; its statuses are appended to `out`."""
    thread = threading.Thread(
        target=lambda: out.append(storescu(port, [source], calling="MEANWHILE").statuses)
    )
    thread.start()
    return thread


# --------------------------------------------------------------------------- datasets


def part10_with_body(path: Path, body: bytes) -> Path:
    """A Part-10 file: valid preamble and file meta (CT, Explicit LE), then `body` as dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with path.open("wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.write(body)
    return path


def test_garbage_dataset_gets_c210_and_nothing_is_kept(plain: RouterDaemon, tmp_path: Path) -> None:
    """Random bytes after a valid file meta are answered 0xC210 (or aborted); nothing is kept."""
    source = part10_with_body(tmp_path / "garbage.dcm", random.Random(0xC210).randbytes(4096))
    before = kept(plain)
    try:
        answer: list[int] | str = pyn_store(plain.port, [source])
    except AssociationAborted:  # an aborted association is an acceptable answer too
        answer = "aborted"
    assert answer in ([0xC210], "aborted")
    assert kept(plain) == before


def test_truncated_dataset_gets_c210_and_nothing_is_kept(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """A dataset cut off inside Study Instance UID is answered 0xC210; nothing is kept."""
    whole = tmp_path / "whole.dcm"
    make_ct(whole, size=4096, StudyInstanceUID="1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18")
    raw = whole.read_bytes()
    cut = raw.index(b"1.2.3.4.5.6.7.8.9.10.11") + 10
    source = tmp_path / "truncated.dcm"
    source.write_bytes(raw[:cut])
    before = kept(plain)
    assert pyn_store(plain.port, [source]) == [0xC210]
    assert kept(plain) == before


def test_daemon_serves_on_after_a_garbage_dataset(plain: RouterDaemon, tmp_path: Path) -> None:
    """After a garbage dataset on one association, a normal store on another succeeds."""
    garbage = part10_with_body(tmp_path / "garbage.dcm", random.Random(1).randbytes(2048))
    with contextlib.suppress(AssociationAborted):  # any answer: the next sender matters
        pyn_store(plain.port, [garbage])
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    result = storescu(plain.port, [source])
    assert result.statuses == [0x0000], result.output
    assert archived(plain, source).read_bytes().endswith(source.read_bytes()[-4096:])


# (PatientID sent, the folder it must become)
HOSTILE_PATIENT_IDS = [
    ("../../etc", ".._.._etc"),
    ("/abs", "_abs"),
    ("a\\b", "a_b"),  # LO: the backslash makes two values, joined again with "\"
    ("..", "__"),
    (".", "_"),
    ("", "UNKNOWN"),
    ("x\x01y\x1fz\x7f", "x_y_z_"),
    ("n\x00l", "n_l"),
]


def test_hostile_tag_values_stay_inside_the_destination(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """PatientIDs like ../../etc, /abs, a\\b, .., control chars stay in archive/; "" is UNKNOWN."""
    sources = tmp_path / "hostile"
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE  # write them as is
    try:
        uids = {
            str(make_instance(sources / f"{n}.dcm", CTImageStorage, PatientID=value)): folder
            for n, (value, folder) in enumerate(HOSTILE_PATIENT_IDS)
        }
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    result = storescu(plain.port, [sources])
    assert result.statuses == [0x0000] * len(uids), result.output
    archive = plain.workdir / "archive"
    for uid, folder in uids.items():
        (found,) = list(archive.rglob(f"{uid}.dcm"))
        assert found.relative_to(archive).parts[0] == folder
    # Nothing anywhere in the daemon's tree, or next to it, outside archive/.
    root = plain.workdir.parent
    stray = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix == ".dcm" and archive not in p.parents
    ]
    assert stray == []
    assert not (root / "etc").exists() and not Path("/abs").exists()


# --------------------------------------------------------------------------- PDUs and stalls


def test_stalled_sender_is_dropped_while_others_store(plain: RouterDaemon, tmp_path: Path) -> None:
    """A sender stopping mid-P-DATA is cut off after network_timeout; others store meanwhile."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    with socket.create_connection((LOOPBACK, plain.port), timeout=5) as sock:
        sock.sendall(associate_rq(plain.port, "STALLER"))
        assert sock.recv(1)[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        # A P-DATA-TF announcing 1000 bytes, of which only 50 ever come.
        sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + b"\0" * 50)
        results: list[list[int]] = []
        other = store_meanwhile(plain.port, source, results)
        _, closed_after = read_until_closed(sock, timeout=NETWORK_TIMEOUT + 3)
        other.join(30)
    assert results == [[0x0000]]
    assert archived(plain, source).is_file()
    assert NETWORK_TIMEOUT - 0.5 <= closed_after <= NETWORK_TIMEOUT + 3


def test_stalled_sender_drop_is_logged(plain: RouterDaemon) -> None:
    """Dropping a stalled sender leaves a line naming it in the daemon's log."""
    with socket.create_connection((LOOPBACK, plain.port), timeout=5) as sock:
        sock.sendall(associate_rq(plain.port, "STALLER2"))
        assert sock.recv(1)[:1] == b"\x02"
        sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + b"\0" * 50)
        read_until_closed(sock, timeout=NETWORK_TIMEOUT + 3)
    plain.wait_log("STALLER2", timeout=2)


MALFORMED = {
    "random-bytes": random.Random(7).randbytes(300),
    "unknown-pdu-type": struct.pack(">BBI", 0xFF, 0, 4) + b"abcd",
    "p-data-before-associate": struct.pack(">BBI", 0x04, 0, 6) + b"\0\0\0\x02\x01\x03",
    "associate-rq-length-2gib": struct.pack(">BBI", 0x01, 0, 0x7FFFFFFF) + b"x" * 10,
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_pdu_closes_the_connection_and_echo_still_works(
    plain: RouterDaemon, data: bytes
) -> None:
    """Malformed PDUs get the connection closed (maybe after an A-ABORT); C-ECHO still works."""
    with socket.create_connection((LOOPBACK, plain.port), timeout=5) as sock:
        sock.sendall(data)
        got, _ = read_until_closed(sock, timeout=NETWORK_TIMEOUT + 3)
    assert got[:1] in (b"", b"\x07")  # nothing, or an A-ABORT PDU
    assert echoscu(plain.port).returncode == 0


def test_silent_connection_is_dropped_after_network_timeout(plain: RouterDaemon) -> None:
    """A TCP client that never sends an A-ASSOCIATE-RQ is dropped after network_timeout."""
    with socket.create_connection((LOOPBACK, plain.port), timeout=5) as sock:
        _, closed_after = read_until_closed(sock, timeout=NETWORK_TIMEOUT + 3)
    assert closed_after <= NETWORK_TIMEOUT + 3


def test_sigterm_after_a_malformed_pdu_stops_promptly(
    router: Callable[..., RouterDaemon],
) -> None:
    """SIGTERM soon after a peer sent a malformed PDU and left: exit 0 within 5 s."""
    daemon = router(rule_file())
    with socket.create_connection((LOOPBACK, daemon.port), timeout=5) as sock:
        sock.sendall(MALFORMED["unknown-pdu-type"])
        read_until_closed(sock, timeout=NETWORK_TIMEOUT + 3)
    start = time.monotonic()
    code = daemon.stop(timeout=8)
    assert (code, time.monotonic() - start < 5) == (0, True)


# --------------------------------------------------------------------------- size


def dataset_bytes(path: Path) -> int:
    """The size of a Part-10 file's dataset (everything after the file meta)."""
    _meta, offset = split_dataset(path)
    return path.stat().st_size - offset


def tail(path: Path, nbytes: int) -> bytes:
    """The last `nbytes` of a file (the end of its Pixel Data)."""
    with path.open("rb") as fp:
        fp.seek(-nbytes, os.SEEK_END)
        return fp.read()



def test_memory_stays_flat_for_a_300_mb_instance(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """A 300 MB multi-frame instance is stored whole; no process's peak RSS passes 100 MiB."""
    daemon = router(rule_file())
    source = tmp_path / "big.dcm"
    make_multiframe(source, 300 * MiB, PatientID="BIG")
    result = storescu(daemon.port, [source])
    assert result.statuses == [0x0000], result.output
    peaks = daemon.peak_rss_mib()  # the main process and its receiving workers
    stored = archived(daemon, source)
    # The file meta is the router's own (its implementation UID): compare the dataset.
    assert dataset_bytes(stored) == dataset_bytes(source) > 300 * MiB - MiB
    assert tail(stored, MiB) == tail(source, MiB)
    assert max(peaks.values()) <= 100, f"peak RSS by process, MiB: {peaks}"
