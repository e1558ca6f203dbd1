"""Hostile datasets and disk leftovers against a real `dicom-router run` (issue 7 rows 3, 4, 9, 10).

Broken structure is answered 0xC210 and a deflate bomb 0xC212, with nothing kept and one
log line; a deflated instance is stored as sent; a store killed mid-copy leaves no
temporary file after a restart; many short associations leave no file descriptors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian
from pynetdicom.presentation import build_context

from router.spool.durable import JOURNAL
from tests import brokendata
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct, make_multiframe
from tests.peers import pyn_store, storescu
from tests.test_scp import archived, kept, module_daemon, rule_file
from tests.test_walk import BUILDERS

pytestmark = pytest.mark.interop

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """One daemon storing everything under ARCHIVE."""
    yield from module_daemon(tmp_path_factory, "dataset", rule_file())


def proc_status(daemon: RouterDaemon, field: str) -> int:
    """A /proc/PID/status field of the daemon's main process, in bytes (kB fields)."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{daemon.proc.pid}/status")


def instance_uid(path: Path) -> str:
    """The SOP Instance UID of a file, from its file meta (never inflating the dataset)."""
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def log_lines(daemon: RouterDaemon, fragment: str) -> list[str]:
    """The daemon's log lines that contain `fragment`."""
    return [line for line in daemon.log().splitlines() if fragment in line]


# --------------------------------------------------------------------------- row 4


@pytest.mark.parametrize("build", list(BUILDERS.values()), ids=list(BUILDERS))
def test_broken_structure_gets_c210_nothing_kept_one_log_line(
    plain: RouterDaemon, tmp_path: Path, build: brokendata.Builder
) -> None:
    """Truncated pixels, trailing garbage, an open sequence, open fragments: 0xC210."""
    assert_refused(plain, build(tmp_path / "broken.dcm"), 0xC210)


def assert_refused(daemon: RouterDaemon, source: Path, status: int) -> str:
    """`source` sent gets `status`, nothing is kept, one log line says so; that line."""
    uid = instance_uid(source)
    before = kept(daemon)
    assert pyn_store(daemon.port, [source]) == [status]
    assert kept(daemon) == before
    daemon.wait_log(uid)
    (line,) = log_lines(daemon, uid)
    assert f"status=0x{status:04X}" in line
    return line


def test_valid_instance_after_a_broken_one_is_stored(plain: RouterDaemon, tmp_path: Path) -> None:
    """The walk rejects the broken instance, not the association: the next one is stored."""
    broken = brokendata.truncated_pixel_data(tmp_path / "broken.dcm")
    good = tmp_path / "good.dcm"
    make_ct(good, size=64 * 1024)
    assert pyn_store(plain.port, [broken, good]) == [0xC210, 0x0000]
    assert archived(plain, good).read_bytes()[-4096:] == good.read_bytes()[-4096:]


# --------------------------------------------------------------------------- row 3


def test_deflated_instance_is_stored_deflated_as_sent(plain: RouterDaemon, tmp_path: Path) -> None:
    """A Deflated Explicit VR LE CT is answered 0x0000 and stored with its deflated bytes."""
    make_ct(tmp_path / "ct.dcm", size=256 * 1024, PatientID="DEFLATED")
    source = brokendata.deflated_copy(tmp_path / "ct.dcm", tmp_path / "dfl.dcm")
    assert pyn_store(plain.port, [source]) == [0x0000]
    stored = archived(plain, source)
    assert str(read_file_meta_info(stored).TransferSyntaxUID) == DeflatedExplicitVRLittleEndian
    deflated = source.read_bytes()[-1000:]
    assert stored.read_bytes()[-1000:] == deflated


def test_deflate_bomb_gets_c212_nothing_kept_memory_flat(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """0.5 MB inflating to 512 MiB: 0xC212, nothing kept, peak RSS <= idle + 64 MiB."""
    daemon = router(rule_file())
    source = brokendata.deflate_bomb(tmp_path / "bomb.dcm", 512 * MiB)
    assert source.stat().st_size < MiB
    idle = proc_status(daemon, "VmRSS")
    before = kept(daemon)
    context = build_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    assert pyn_store(daemon.port, [source], contexts=[context]) == [0xC212]
    assert kept(daemon) == before
    peak = proc_status(daemon, "VmHWM")
    assert peak - idle <= 64 * MiB, f"peak {peak / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"
    daemon.wait_log(instance_uid(source))
    (line,) = log_lines(daemon, instance_uid(source))
    assert "status=0xC212" in line


# --------------------------------------------------------------------------- row 9


def journal_config(archive: Path) -> str:
    """A rule file storing everything to `archive` (absolute), named by SOP Instance UID."""
    return (
        rule_file()
        .replace('{path: "archive/', f'{{path: "{archive}/')
        .replace("{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/", "")
    )


def test_restart_removes_a_temporary_file_noted_in_the_journal(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """A `.<name>.<token>.tmp` noted in spool/placing/ is gone after a restart; others stay."""
    daemon = router(rule_file())
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    assert storescu(daemon.port, [source]).statuses == [0x0000]
    stored = archived(daemon, source)
    daemon.stop()
    token = uuid.uuid4().hex
    leftover = stored.with_name(f".{stored.name}.{token}.tmp")
    shutil.copyfile(stored, leftover)
    os.symlink(leftover, daemon.workdir / "spool" / JOURNAL / token)
    unrelated = stored.with_name(f".{stored.name}.{uuid.uuid4().hex}.tmp")  # not ours to judge
    unrelated.write_bytes(b"x")
    daemon.start()
    assert not leftover.exists()
    assert list((daemon.workdir / "spool" / JOURNAL).iterdir()) == []
    assert unrelated.exists()
    assert stored.read_bytes()[-4096:] == source.read_bytes()[-4096:]  # the meta is the router's
    assert str(leftover) in daemon.log()


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/dev/shm").is_dir()
    or os.stat("/dev/shm").st_dev == os.stat(Path(__file__).parent).st_dev,
    reason="needs /dev/shm on another filesystem, so that a store copies (and takes time)",
)
def test_kill9_during_a_store_copy_leaves_no_temporary_file_after_restart(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """kill -9 while a 256 MB instance is copied to another filesystem; restart cleans up."""
    archive = Path("/dev/shm") / f"dsguard-{uuid.uuid4().hex}"
    try:
        daemon = router(journal_config(archive))
        source = tmp_path / "big.dcm"
        make_multiframe(source, 256 * MiB)

        def send() -> None:
            with contextlib.suppress(Exception):  # the association dies with the daemon
                pyn_store(daemon.port, [source])

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while not list(archive.glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.002)
        temps = list(archive.glob(".*.tmp"))
        daemon.kill9()
        sender.join(30)
        assert temps, "the store's temporary file was never seen"
        assert all(t.exists() for t in temps)  # what kill -9 leaves
        daemon.start()
        assert list(archive.glob(".*.tmp")) == []
    finally:
        shutil.rmtree(archive, ignore_errors=True)


# --------------------------------------------------------------------------- row 10


def open_fds(daemon: RouterDaemon) -> int:
    """How many file descriptors the daemon's main process holds."""
    assert daemon.proc is not None
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def test_many_short_associations_leave_no_file_descriptors(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """60 associations of one C-STORE each: the daemon holds at most 4 more fds after."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    for _ in range(3):  # warm up: the pools' first connections
        assert pyn_store(plain.port, [source]) == [0x0000]
    time.sleep(0.5)
    before = open_fds(plain)
    for _ in range(60):
        assert pyn_store(plain.port, [source]) == [0x0000]
    time.sleep(0.5)  # association threads end just after the release
    assert open_fds(plain) - before <= 4
