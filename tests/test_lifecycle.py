"""The daemon's life cycle against the real `dicom-router run` process (design §6-8).

Hot reload (watched file, SIGHUP, invalid files, fixtures, live destinations, restart-only
`listen` keys), reloads under load, the sd_notify protocol on a real datagram socket,
graceful SIGTERM (in-flight transfers, idle associations), the C-STORE/delivery log lines
and the spool lock. Every peer is real (DCMTK storescu/storescp, pynetdicom) on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.rules.ruleset import config_version
from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_ct, make_instance
from tests.peers import (
    LOOPBACK,
    StoreResult,
    StoreSCP,
    _descendants,
    echoscu,
    free_port,
    storescu,
)

pytestmark = pytest.mark.interop

Router = Callable[..., RouterDaemon]

REJECT = "[{reject: 0x0124}]"
STORE_A = "[{store: A}]"
STORE_B = "[{store: B}]"

# One C-STORE line of the text log: "... C-STORE from AE@IP Class UID rule=R ... config=V".
C_STORE = re.compile(
    r"C-STORE from (?P<calling>\S+)@\S+ \S+ (?P<uid>[0-9.]+) rule=(?P<rule>\S+) "
    r"actions=(?P<actions>\S+) status=0x(?P<status>[0-9A-F]{4}) config=(?P<version>\S+)"
)


def rule_file(
    default: str = STORE_A, *, destinations: str = "", extra: str = "", port: object = "{port}"
) -> str:
    """A rule file storing into the folders A/ and B/ (relative to the rule file)."""
    return (
        "version: 1\n"
        f"listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}}}\n"
        "spool: spool\n"
        "spool_min_free: 1MiB\n"
        "destinations:\n"
        '  A: {path: "A/{SOPInstanceUID}.dcm"}\n'
        '  B: {path: "B/{SOPInstanceUID}.dcm"}\n'
        f"{destinations}"
        f"default: {default}\n"
        f"{extra}"
    )


def pacs(scp: StoreSCP, name: str = "pacs") -> str:
    """A `destinations:` entry for a DCMTK storescp that retries quickly."""
    return (
        f"  {name}: {{ae_title: {scp.ae_title}, host: 127.0.0.1, port: {scp.port}, "
        "retry: {max_attempts: 1000, initial_delay: 100ms, max_delay: 500ms}}\n"
    )


def filled(d: RouterDaemon, text: str) -> str:
    """The text the daemon sees for `text` (`{port}` filled in as write_config does)."""
    return text.replace("{port}", str(d.port))


def send(port: int, path: Path, calling: str = "STORESCU") -> int | None:
    """C-STORE one file with storescu; its status, or None without a response."""
    result = storescu(port, [path], calling=calling, timeout=30)
    return result.statuses[0] if result.statuses else None


def stored(folder: Path) -> set[str]:
    """SOP Instance UIDs stored as UID.dcm in `folder`."""
    return {p.name.removesuffix(".dcm") for p in folder.glob("*.dcm")} if folder.is_dir() else set()


def received_uids(scp: StoreSCP) -> set[str]:
    """SOP Instance UIDs storescp received (its files are named MODALITY.UID.dcm)."""
    return {name.split(".", 1)[1].removesuffix(".dcm") for name in scp.received()}


def c_store_lines(log: str) -> list[re.Match[str]]:
    """Every C-STORE line of a text log, parsed."""
    return [m for m in map(C_STORE.search, log.splitlines()) if m]


def refused_counts(log: str) -> list[int]:
    """The failed-reload counter of each 'reload refused' line, in order."""
    return [int(n) for n in re.findall(r"reload refused.*?\((\d+) failed reloads?\)", log)]


def accepts(port: int) -> bool:
    """True if 127.0.0.1:port accepts a TCP connection (only for ports expected closed: a
    bare probe of the daemon's port holds up its shutdown, see the probe test)."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((LOOPBACK, port)) == 0


def watched(router: Router, text: str, **kw: Any) -> RouterDaemon:
    """Start a daemon, then wait until it watches its rule file's folder (inotify).

    The fixture returns once the port listens, which is before the daemon's watcher thread
    has armed its inotify watch (the forwarder is spawned in between): an edit saved in that
    gap of start-up is not seen. That window is not what the reload tests are about, so they
    wait for the watch, read from /proc/PID/fdinfo.
    """
    d = router(text, **kw)
    assert d.proc is not None
    folder = f"ino:{d.config_path.parent.stat().st_ino:x} "
    fdinfo = Path(f"/proc/{d.proc.pid}/fdinfo")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in fdinfo.iterdir():
            try:
                info = entry.read_text()
            except OSError:
                continue
            if any(line.startswith("inotify wd:") and folder in line for line in info.splitlines()):
                return d
        time.sleep(0.01)
    raise AssertionError(f"dicom-router does not watch {d.config_path.parent} after 10 s")


def poll_until_status(
    port: int, path: Path, wanted: int, since: float, timeout: float = 5.0
) -> float:
    """Send every ~50 ms until the status is `wanted`; seconds from `since` to that answer."""
    while True:
        started = time.monotonic()
        status = send(port, path)
        answered = time.monotonic()
        if status == wanted:
            return answered - since
        assert status == 0x0000, f"unexpected status {status} while waiting for {wanted:#06x}"
        assert answered - since < timeout, f"status still 0x0000 after {timeout} s"
        time.sleep(max(0.0, 0.05 - (answered - started)))


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    """One small CT instance."""
    path = tmp_path / "ct.dcm"
    make_ct(path, size=2048)
    return path


# --------------------------------------------------------------------------- hot reload


@pytest.mark.alone
def test_rename_save_applies_within_one_second(router: Router, ct: Path) -> None:
    """An editor-style save (write a temp file, rename it over the rule file) is in force
    within 1 s: the status flips from 0x0000 to the new rule's 0x0124."""
    d = watched(router, rule_file(STORE_A))
    assert send(d.port, ct) == 0x0000
    renamed = time.monotonic()  # write_config's last step is the rename
    d.write_config(rule_file(REJECT))
    elapsed = poll_until_status(d.port, ct, 0x0124, renamed)
    assert elapsed < 1.0, f"new rules answered {elapsed:.3f} s after the rename"


@pytest.mark.alone
def test_in_place_save_applies(router: Router, ct: Path) -> None:
    """A save that rewrites the rule file in place (open 'w', write) is picked up too."""
    d = watched(router, rule_file(STORE_A))
    assert send(d.port, ct) == 0x0000
    saved = time.monotonic()
    with open(d.config_path, "w") as f:
        f.write(filled(d, rule_file(REJECT)))
    elapsed = poll_until_status(d.port, ct, 0x0124, saved)
    assert elapsed < 1.0, f"new rules answered {elapsed:.3f} s after the save"


def test_invalid_save_keeps_old_rules_and_counts_failures(router: Router, tmp_path: Path) -> None:
    """Bad YAML, then an unknown key: each reload is refused with FILE:LINE:COL, the
    failed-reload counter goes 1 then 2, and the old rules keep storing."""
    good = rule_file(STORE_A)
    d = watched(router, good)
    location = re.escape(str(d.config_path)) + r":(\d+):(\d+): "

    d.write_config(good.replace(STORE_A, "[{store: A}"))  # unclosed flow sequence
    d.wait_log("reload refused", count=1)
    assert re.search(location, d.log()), d.log()
    assert refused_counts(d.log()) == [1]
    first = tmp_path / "first.dcm"
    uid1 = make_ct(first, size=2048)
    assert send(d.port, first) == 0x0000
    assert uid1 in stored(d.workdir / "A")

    bad_key = good + "bogus_key: 1\n"
    d.write_config(bad_key)
    d.wait_log("reload refused", count=2)
    line = len(bad_key.splitlines())
    assert re.search(re.escape(f"{d.config_path}:{line}:1: ") + r".*bogus_key", d.log()), d.log()
    assert refused_counts(d.log()) == [1, 2]
    second = tmp_path / "second.dcm"
    uid2 = make_ct(second, size=2048)
    assert send(d.port, second) == 0x0000
    assert uid2 in stored(d.workdir / "A")
    assert "reloaded" not in d.log()


FAILING_FIXTURE = """\
rules:
  - name: ct-refused
    match: {sop_class: CTImageStorage}
    actions: [{reject: 0x0124}]
tests:
  - name: ct-is-stored
    instance: {sop_class: CTImageStorage, calling_ae: CT_1}
    expect: {rule: default, status: 0x0000}
"""


def test_failing_fixture_refuses_reload_and_fails_check(router: Router, ct: Path) -> None:
    """A rule file whose `tests:` fixture fails is refused like an invalid one (old rules
    stay), and `dicom-router check` on it exits 1 showing expected vs got."""
    d = watched(router, rule_file(STORE_A))
    d.write_config(rule_file(STORE_A, extra=FAILING_FIXTURE))
    d.wait_log("reload refused")
    log = d.log()
    assert re.search(re.escape(str(d.config_path)) + r":\d+:\d+: .*ct-is-stored", log), log
    assert refused_counts(log) == [1]
    assert send(d.port, ct) == 0x0000  # ct-refused was not swapped in

    check = subprocess.run(
        [DICOM_ROUTER, "check", d.config_path], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 1, check
    output = check.stdout + check.stderr
    assert re.search(r"rule expected default got ct-refused", output), output
    assert re.search(r"status expected 0x0000 got 0x0124", output), output
    assert re.search(re.escape(str(d.config_path)) + r":\d+:\d+: ", check.stderr), output


def test_sighup_reloads_and_nothing_else_does_with_no_watch(router: Router, ct: Path) -> None:
    """With --no-watch a saved change is ignored until SIGHUP, which applies it."""
    d = router(rule_file(STORE_A), args=("--no-watch",))
    d.write_config(rule_file(REJECT))
    time.sleep(1.5)  # more than the watcher would ever need
    assert send(d.port, ct) == 0x0000
    assert "reloaded" not in d.log()
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded")
    assert send(d.port, ct) == 0x0124


def test_reloads_under_load_lose_nothing_and_log_the_deciding_version(
    router: Router, tmp_path: Path
) -> None:
    """100 reloads alternating two rule versions (store in A / store in B) while one
    association streams 1000 instances: every C-STORE succeeds, each instance is in exactly
    one folder, and the version logged for it is the one whose rule put it there."""
    text_a, text_b = rule_file(STORE_A), rule_file(STORE_B)
    d = watched(router, text_a)
    folder_of = {config_version(filled(d, text_a)): "A", config_version(filled(d, text_b)): "B"}
    src = tmp_path / "many"
    src.mkdir()
    uids = {str(make_instance(src / f"{i:04d}.dcm")) for i in range(1000)}

    outcome: dict[str, Any] = {}

    def stream() -> None:
        try:
            outcome["result"] = storescu(d.port, [src], timeout=60)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    sender = threading.Thread(target=stream, name="storescu-stream")
    started = time.monotonic()
    sender.start()
    try:
        d.wait_log("C-STORE from", timeout=10)
        for i in range(100):
            d.write_config(text_b if i % 2 == 0 else text_a)
            d.wait_log("reloaded", timeout=5, count=i + 1)
    finally:
        sender.join(60)
    assert not sender.is_alive(), "storescu still running after 60 s"
    assert "error" not in outcome, outcome.get("error")
    result: StoreResult = outcome["result"]
    assert len(result.statuses) == 1000 and set(result.statuses) == {0}, result.output[-2000:]
    assert result.returncode == 0
    assert time.monotonic() - started < 40

    in_a, in_b = stored(d.workdir / "A"), stored(d.workdir / "B")
    assert not in_a & in_b
    assert in_a | in_b == uids

    lines = c_store_lines(d.log())
    assert sorted(m["uid"] for m in lines) == sorted(uids)  # one decision each
    for m in lines:
        assert m["version"] in folder_of, m.group(0)
        expected = in_a if folder_of[m["version"]] == "A" else in_b
        assert m["uid"] in expected, f"{m['uid']} logged config={m['version']} but stored elsewhere"
    # the reloads really happened mid-stream: the deciding version changed many times
    versions = [m["version"] for m in lines]
    switches = sum(a != b for a, b in itertools.pairwise(versions))
    assert switches >= 10, f"only {switches} version changes within the stream"
    assert d.log().count("reloaded") == 100
    assert "reload refused" not in d.log()


def test_listen_port_change_warns_and_waits_for_restart(router: Router, ct: Path) -> None:
    """A new listen.port is named in a warning; the old port keeps serving until a
    restart, after which the new port serves."""
    d = watched(router, rule_file(STORE_A))
    old_port, new_port = d.port, free_port()
    d.write_config(rule_file(STORE_A, port=new_port))
    d.wait_log("listen.port")
    warning = next(line for line in d.log().splitlines() if "listen.port" in line)
    assert "WARNING" in warning and "restart" in warning, warning
    assert send(old_port, ct) == 0x0000
    assert not accepts(new_port)

    assert d.stop() == 0
    d.port = new_port  # the fixture's start() waits for this port
    d.start()
    assert send(new_port, ct) == 0x0000
    assert not accepts(old_port)


def test_destination_added_by_reload_applies_live(
    router: Router, store_scp: StoreSCP, tmp_path: Path
) -> None:
    """A DICOM destination and a forward to it, added by a reload, receive the instances
    sent after the reload (and not those sent before)."""
    d = watched(router, rule_file(STORE_A))
    before, after = tmp_path / "before.dcm", tmp_path / "after.dcm"
    make_ct(before, size=2048)
    uid_after = str(make_ct(after, size=2048))
    assert send(d.port, before) == 0x0000

    d.write_config(rule_file("[{store: A}, {forward: pacs}]", destinations=pacs(store_scp)))
    d.wait_log("reloaded")
    assert send(d.port, after) == 0x0000
    store_scp.wait_count(1, timeout=15)
    time.sleep(0.5)  # anything else queued would arrive by now
    assert received_uids(store_scp) == {uid_after}


# --------------------------------------------------------------------------- systemd


# Linux's SO_TIMESTAMPNS (= its SCM_TIMESTAMPNS), which Python's socket module lacks.
SO_TIMESTAMPNS = 35


class NotifyListener:
    """systemd's side of sd_notify: a datagram socket that records (time, sender pid, text).

    The time is the kernel's arrival time (SO_TIMESTAMPNS, on the monotonic clock), not
    when the test got round to reading: a test starved by its neighbours must not see
    pings bunched up that the daemon sent on time.
    """

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.messages: list[tuple[float, int, str]] = []

    def receive(self, timeout: float) -> tuple[float, int, str] | None:
        """The next datagram, or None after `timeout` s."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(
                4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16)
            )
        except TimeoutError:
            return None
        pid, arrived = -1, time.monotonic()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = struct.unpack("qq", payload[:16])  # CLOCK_REALTIME
                arrived -= time.time() - (seconds + nanos / 1e9)
        message = (arrived, pid, data.decode())
        self.messages.append(message)
        return message

    def next_except_watchdog(self, timeout: float) -> tuple[float, int, str]:
        """The next datagram that is not a WATCHDOG=1 ping."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and got[2] != "WATCHDOG=1":
                return got
        raise AssertionError(f"no notification in {timeout} s; got {self.messages}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.mark.alone
def test_systemd_notify_protocol(
    router: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real NOTIFY_SOCKET: READY=1 (with STATUS=) once the port accepts, WATCHDOG=1
    every ~0.2 s for WATCHDOG_USEC=400000, RELOADING=1 + MONOTONIC_USEC then READY=1 on
    SIGHUP, STOPPING=1 and exit 0 on SIGTERM; every datagram from the main process."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    listener = NotifyListener(tmp_path / "notify")
    port = free_port()
    ready_and_accepting: dict[str, Any] = {}

    def first_message() -> None:  # READY=1 must mean: connect now and it works
        got = listener.receive(30)
        if got is not None:
            ready_and_accepting["message"] = got
            ready_and_accepting["echo"] = echoscu(port, timeout=10).returncode

    waiter = threading.Thread(target=first_message)
    waiter.start()
    try:
        d = router(
            rule_file(STORE_A),
            port=port,
            env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"},
        )
        waiter.join(30)
        main_pid = d.proc.pid if d.proc else -1
        _, _, text = ready_and_accepting["message"]
        assert text.split("\n")[0] == "READY=1", text
        assert any(line.startswith("STATUS=") and len(line) > 7 for line in text.split("\n"))
        assert ready_and_accepting["echo"] == 0, "READY=1 sent before the port served"

        # watchdog pings: every WATCHDOG_USEC/2 = 0.2 s
        window_start = time.monotonic()
        while time.monotonic() - window_start < 1.5:
            listener.receive(0.5)
        pings = [t for t, _, m in listener.messages if m == "WATCHDOG=1" and t >= window_start]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        shown = [round(g, 3) for g in gaps]
        assert 5 <= len(pings) <= 10, listener.messages
        assert 0.15 <= statistics.median(gaps) <= 0.3, shown  # about every WATCHDOG_USEC/2
        assert max(gaps) < 0.4, shown  # a gap of WATCHDOG_USEC would get the daemon killed
        assert min(gaps) > 0.05, shown  # pings, not a flood

        # SIGHUP: RELOADING=1 with the monotonic time, then READY=1
        before = time.monotonic_ns() // 1000
        d.signal(signal.SIGHUP)
        _, _, reloading = listener.next_except_watchdog(5)
        after = time.monotonic_ns() // 1000
        lines = reloading.split("\n")
        assert lines[0] == "RELOADING=1", reloading
        usec = dict(line.split("=", 1) for line in lines)["MONOTONIC_USEC"]
        assert before <= int(usec) <= after, (before, usec, after)
        _, _, ready = listener.next_except_watchdog(5)
        assert ready.split("\n")[0] == "READY=1", ready

        # SIGTERM: STOPPING=1, exit 0, nothing after
        forwarder_alive = bool(_children(main_pid))
        d.signal(signal.SIGTERM)
        assert d.proc is not None
        assert d.proc.wait(20) == 0
        while listener.receive(0.3) is not None:
            pass
        texts = [m for _, _, m in listener.messages if m != "WATCHDOG=1"]
        assert texts[-1] == "STOPPING=1", texts
        assert listener.messages[-1][2] == "STOPPING=1", listener.messages[-3:]
        assert [m.split("\n")[0] for m in texts].count("READY=1") == 2, texts

        assert forwarder_alive, "expected the forwarder child process to run"
        senders = {p for _, p, _ in listener.messages}
        assert senders == {main_pid}, f"datagrams from {senders}, main pid {main_pid}"
    finally:
        waiter.join(1)
        listener.close()


def test_no_child_inherits_the_notify_socket(router: Router, tmp_path: Path) -> None:
    """The fork server, the workers and the forwarder start without systemd's variables."""
    listener = NotifyListener(tmp_path / "notify")
    try:
        d = router(
            rule_file(STORE_A).replace("port: {port}", "port: {port}, workers: 2"),
            env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"},
        )
        assert d.proc is not None
        children = [pid for pid, _ in _descendants(d.proc.pid)]
        assert len(children) >= 4  # fork server, 2 workers, forwarder (+ resource tracker)
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {entry.split(b"=", 1)[0] for entry in environ}
            assert not names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC"}, pid
    finally:
        listener.close()


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_mid_transfer_keeps_every_acknowledged_instance(
    router: Router, tmp_path: Path
) -> None:
    """SIGTERM to the whole unit (systemd's default KillMode) while storescu streams 200
    CTs queued for a destination that is down: the daemon exits 0 within 20 s, and after a
    restart with the destination up, every instance storescu saw acknowledged arrives."""
    scp = StoreSCP(tmp_path / "late-pacs")  # configured now, started only after the restart
    d = router(rule_file("[{forward: pacs}]", destinations=pacs(scp)))
    src = tmp_path / "series"
    src.mkdir()
    for i in range(200):
        make_ct(src / f"{i:04d}.dcm", size=16 * 1024)

    outcome: dict[str, Any] = {}
    sender = threading.Thread(
        target=lambda: outcome.setdefault("result", storescu(d.port, [src], timeout=60))
    )
    sender.start()
    try:
        d.wait_log("C-STORE from", count=30, timeout=20)
        assert d.proc is not None
        sent_at_sigterm = len(c_store_lines(d.log()))
        stop_at = time.monotonic()
        os.killpg(d.proc.pid, signal.SIGTERM)
        code = d.proc.wait(20)
        took = time.monotonic() - stop_at
    finally:
        sender.join(60)
    assert sent_at_sigterm < 200, "the stream ended before SIGTERM: not mid-transfer"
    assert code == 0, d.log()[-3000:]
    assert took < 20
    result: StoreResult = outcome["result"]
    acked = {f.sop_instance_uid for f in result.files if f.status == 0x0000}
    assert None not in acked
    assert len(acked) >= 30

    scp.start()
    try:
        # storescp moves to another port if its free port was taken meanwhile: follow it
        d.write_config(rule_file("[{forward: pacs}]", destinations=pacs(scp)))
        d.start()
        scp.wait_count(len(acked), timeout=30)
        assert acked <= received_uids(scp), acked - received_uids(scp)
    finally:
        d.stop()
        scp.stop()


def sigterm(d: RouterDaemon) -> tuple[int, float]:
    """SIGTERM the daemon's main process; its exit code and the seconds it took to exit."""
    assert d.proc is not None
    stop_at = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.proc.wait(25)
    return code, time.monotonic() - stop_at


def test_sigterm_with_idle_association_exits_after_drain(router: Router) -> None:
    """An association held open and idle cannot keep the daemon alive: after SIGTERM it
    drains for 10 s, aborts the association and exits 0 (within ~16 s)."""
    d = router(rule_file(STORE_A))
    ae = AE(ae_title="IDLE_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, d.port, ae_title="DICOM_ROUTER")
    try:
        assert assoc.is_established
        assert d.proc is not None
        code, took = sigterm(d)
        assert code == 0, d.log()[-3000:]
        assert took < 16.5, f"exit took {took:.1f} s"
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


def test_sigterm_after_closed_port_probe_exits_promptly(router: Router) -> None:
    """A TCP connect-and-close (a monitoring port check like `nc -z`) that never sent an
    A-ASSOCIATE-RQ and is already gone leaves nothing in flight, so it must not hold up
    SIGTERM: exit 0 within 5 s (design §7: nothing a peer does blocks shutdown; §8)."""
    d = router(rule_file(STORE_A))
    with socket.create_connection((LOOPBACK, d.port), timeout=5):
        pass
    time.sleep(0.2)
    assert d.proc is not None
    code, took = sigterm(d)
    assert code == 0, d.log()[-3000:]
    assert took < 5.0, f"exit took {took:.1f} s after a closed probe connection:\n" + d.log()[-800:]


def test_sigterm_with_a_silent_open_connection_exits_promptly(router: Router) -> None:
    """A client that connects, keeps the socket open and never sends an A-ASSOCIATE-RQ
    has nothing in flight: SIGTERM closes it and the daemon exits 0 within 5 s."""
    d = router(rule_file(STORE_A))
    with socket.create_connection((LOOPBACK, d.port), timeout=15) as silent:
        time.sleep(0.2)
        assert d.proc is not None
        code, took = sigterm(d)
        assert silent.recv(1) == b""  # closed by the daemon, not by us
    assert code == 0, d.log()[-3000:]
    assert took < 5.0, f"exit took {took:.1f} s with a silent connection:\n" + d.log()[-800:]


# --------------------------------------------------------------------------- logs


def test_json_log_lines_carry_cstore_and_delivery_fields(
    router: Router, store_scp: StoreSCP, ct: Path
) -> None:
    """--log-format json: every line is a JSON object; the C-STORE line names the calling
    AE, SOP Instance UID, rule, status and config version; a forward logs its delivery."""
    text = rule_file("[{store: A}, {forward: pacs}]", destinations=pacs(store_scp))
    d = router(text, args=("--log-format", "json"))
    version = config_version(filled(d, text))
    uid = str(make_ct(ct, size=2048))  # overwrite with a known UID
    assert send(d.port, ct, calling="CT_JSON") == 0x0000
    store_scp.wait_count(1, timeout=15)
    d.wait_log('"delivery"', timeout=10)
    assert d.stop() == 0

    records = []
    for line in d.log().splitlines():
        if line.strip():
            record = json.loads(line)  # fails the test on any non-JSON line
            assert isinstance(record, dict), line
            records.append(record)
    stores = [r for r in records if r.get("event") == "c-store"]
    assert len(stores) == 1, stores
    (rec,) = stores
    assert rec["calling_ae"] == "CT_JSON"
    assert rec["sop_instance_uid"] == uid
    assert rec["rule"] == "default"
    assert rec["status"] == 0
    assert rec["config_version"] == version
    deliveries = [r for r in records if r.get("event") == "delivery"]
    assert any(
        r["sop_instance_uid"] == uid and r["destination"] == "pacs" and r["state"] == "delivered"
        for r in deliveries
    ), deliveries


def test_config_version_in_every_cstore_line_and_reload_line(
    router: Router, tmp_path: Path
) -> None:
    """Each C-STORE line carries the version (hash of the file's text) of the rules that
    decided it; the reload line names the old and the new version."""
    text1, text2 = rule_file(STORE_A), rule_file(STORE_B)
    d = watched(router, text1)
    v1, v2 = config_version(filled(d, text1)), config_version(filled(d, text2))
    assert v1 != v2
    batch1, batch2 = tmp_path / "one", tmp_path / "two"
    batch1.mkdir()
    batch2.mkdir()
    uids1 = {str(make_ct(batch1 / f"{i}.dcm", size=2048)) for i in range(3)}
    uids2 = {str(make_ct(batch2 / f"{i}.dcm", size=2048)) for i in range(3)}

    assert storescu(d.port, [batch1]).ok
    d.write_config(text2)
    d.wait_log("reloaded")
    assert storescu(d.port, [batch2]).ok

    log = d.log()
    store_lines = [line for line in log.splitlines() if "C-STORE" in line]
    assert len(store_lines) == 6
    assert all(C_STORE.search(line) for line in store_lines), store_lines
    versions = {m["uid"]: m["version"] for m in c_store_lines(log)}
    assert versions == {**dict.fromkeys(uids1, v1), **dict.fromkeys(uids2, v2)}
    reload_lines = [line for line in log.splitlines() if "reloaded" in line]
    assert len(reload_lines) == 1
    assert v1 in reload_lines[0] and v2 in reload_lines[0], reload_lines


# --------------------------------------------------------------------------- spool lock


def test_second_daemon_on_same_spool_refuses_to_start(router: Router, tmp_path: Path) -> None:
    """A second daemon pointed at a spool in use exits 2 with "in use"; the first serves on."""
    d = router(rule_file(STORE_A))
    other = tmp_path / "other"
    other.mkdir()
    second = other / "router.yaml"
    second.write_text(
        rule_file(STORE_A, port=free_port()).replace(
            "spool: spool", f"spool: {d.workdir / 'spool'}"
        )
    )
    run = subprocess.run(
        [DICOM_ROUTER, "run", "-c", second], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2, run
    assert "in use" in run.stderr, run
    assert echoscu(d.port).returncode == 0
