"""router.process.systemd against a real AF_UNIX datagram socket; the unit file against systemd."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.process.systemd import Notifier

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "dicom-router.service"
MAX_EXPOSURE = 2.5


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_silent(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_ready_sends_ready(listener: tuple[socket.socket, str]) -> None:
    """ready() sends READY=1, alone or with a STATUS= line in the same datagram."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    assert receive(sock) == "READY=1"
    notifier.ready("listening on 0.0.0.0:104")
    assert receive(sock) == "READY=1\nSTATUS=listening on 0.0.0.0:104"


def test_reloading_sends_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 and the CLOCK_MONOTONIC time in µs in one datagram."""
    sock, path = listener
    before = time.monotonic_ns() // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.monotonic_ns() // 1000
    first, second = receive(sock).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    """status(), watchdog() and stopping() each send their one assignment."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    notifier.status("3 queued for pacs")
    assert receive(sock) == "STATUS=3 queued for pacs"
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    notifier.stopping()
    assert receive(sock) == "STOPPING=1"


def test_status_newlines_cannot_inject_assignments(listener: tuple[socket.socket, str]) -> None:
    """A newline in status text is flattened, so it cannot smuggle in READY=1 or the like."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).status("bad rule\nREADY=1")
    assert receive(sock) == "STATUS=bad rule READY=1"


def test_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with @ names a socket in the abstract namespace."""
    name = f"dicom-router-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == "READY=1"


def test_os_environ_is_read_when_no_mapping_is_given(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit mapping the notifier reads os.environ when it is created."""
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().stopping()
    assert receive(sock) == "STOPPING=1"


@pytest.mark.parametrize("value", [None, "", "relative/notify", "vsock:2:1234"])
def test_disabled_notifier_sends_nothing(
    listener: tuple[socket.socket, str], value: str | None
) -> None:
    """Without a usable NOTIFY_SOCKET every call is a silent no-op and no watchdog is armed."""
    sock, _ = listener
    environ = {"WATCHDOG_USEC": "30000000"}
    if value is not None:
        environ["NOTIFY_SOCKET"] = value
    notifier = Notifier(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    assert_silent(sock)


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket that is gone (systemd restarted, path removed) is logged at debug, not raised."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.DEBUG, logger="router.systemd"):
        notifier.ready()
        notifier.reloading()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]
    assert "READY=1" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("extra", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(
    listener: tuple[socket.socket, str], extra: dict[str, str], interval: float | None
) -> None:
    """The interval is WATCHDOG_USEC/2 in seconds, unless WATCHDOG_PID names another process."""
    _, path = listener
    assert Notifier({"NOTIFY_SOCKET": path, **extra}).watchdog_interval == interval


def test_watchdog_for_another_pid_sends_nothing(listener: tuple[socket.socket, str]) -> None:
    """When the watchdog belongs to another process, watchdog() does not ping."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    Notifier(env).watchdog()
    assert_silent(sock)


def test_unset_environment_drops_notify_variables() -> None:
    """After unset_environment only the variables that let a process notify are gone."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    Notifier.unset_environment(env)
    assert env == {"PATH": "/bin"}


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_unit_verifies() -> None:
    """systemd-analyze verify finds nothing wrong but the (not yet installed) binary."""
    result = systemd_analyze("verify", "--man=no", str(UNIT))
    missing_binary = "Command /usr/local/bin/dicom-router is not executable"
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and missing_binary not in line
    ]
    assert complaints == []


def test_unit_security_exposure() -> None:
    """systemd-analyze security rates the unit's overall exposure at 2.5 or better."""
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(
        r"Overall exposure level for dicom-router\.service: (\d+\.\d+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


# MemoryDenyWriteExecute=yes on systemd 252 is a seccomp filter: EPERM for mmap() with
# PROT_WRITE|PROT_EXEC and for mprotect()/pkey_mprotect() adding PROT_EXEC. The script
# installs the same filter (x86_64 numbers) and then exercises every native dependency.
MDWE_SCRIPT = textwrap.dedent(
    """
    import ctypes, errno, mmap, struct, sys
    LD, JEQ, RET, AND, OK, EPERM = 0x20, 0x15, 0x06, 0x54, 0x7FFF0000, 0x00050001
    prog = [(LD, 0, 0, 4), (JEQ, 0, 12, 0xC000003E), (LD, 0, 0, 0), (JEQ, 3, 0, 9),
            (JEQ, 5, 0, 10), (JEQ, 4, 0, 329), (RET, 0, 0, OK),
            (LD, 0, 0, 32), (AND, 0, 0, 6), (JEQ, 3, 4, 6),
            (LD, 0, 0, 32), (AND, 0, 0, 4), (JEQ, 0, 1, 4), (RET, 0, 0, EPERM), (RET, 0, 0, OK)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, fprog, 0, 0):
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("the filter did not refuse a W+X mapping")
    except PermissionError:
        pass
    assert ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(1) == 2
    import numpy, pydantic, pydicom, sqlite3, watchfiles, yaml
    a = numpy.random.default_rng(0).random((400, 400))
    numpy.linalg.inv(a @ a + numpy.eye(400))
    class M(pydantic.BaseModel):
        x: int
    M.model_validate({"x": 1})
    sqlite3.connect(":memory:").execute("select 1")
    from pynetdicom import AE
    ae = AE(ae_title="T")
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assoc = ae.associate("127.0.0.1", server.server_address[1])
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    server.shutdown()
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="x86_64 seccomp filter"
)
def test_dependencies_run_without_write_execute_memory() -> None:
    """CPython, numpy, pydantic-core and pynetdicom work under MemoryDenyWriteExecute=yes."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_SCRIPT], capture_output=True, text=True, timeout=120
    )
    if result.returncode == 77:
        pytest.skip("cannot install a seccomp filter here")
    assert result.returncode == 0, result.stderr
