"""Hostile peers at the upper layer: every limit of router/netlayer, pushed over a real socket.

Each test sends bytes no well-behaved peer would to a real `dicom-router run` and checks
the outcome: an A-ABORT or A-ASSOCIATE-RJ, memory, files left, CPU, time; and that the
daemon serves on and never prints a traceback.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from router.net import netlayer
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct, make_multiframe
from tests.peers import LOOPBACK, echoscu, storescu
from tests.test_scp import archived, module_daemon, rule_file
from tests.ul import ABORT, RELEASE_RQ, Peer, associate_rq, command, dataset_of, pdata, store_rq

pytestmark = pytest.mark.interop

MiB = 1024 * 1024
NETWORK_TIMEOUT = 2.0  # rule_file()'s listen.network_timeout


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """One daemon storing everything under ARCHIVE, network_timeout 2 s."""
    yield from module_daemon(tmp_path_factory, "netlayer", rule_file())


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 KiB CT instance."""
    path = tmp_path_factory.mktemp("ct") / "ct.dcm"
    make_ct(path, size=256 * 1024)
    return path


def incoming(daemon: RouterDaemon) -> list[Path]:
    """What is in the spool's receive folder."""
    return list((daemon.workdir / "spool" / "incoming").iterdir())


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check` until it holds or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


# --------------------------------------------------------------------------- sizes (row 2)


def test_associate_rq_claiming_512_mib_is_aborted_before_anything_is_allocated(
    plain: RouterDaemon,
) -> None:
    """A header claiming 512 MiB gets an A-ABORT and a closed connection; peak RSS stays put."""
    before = max(plain.peak_rss_mib().values())
    with Peer(plain.port) as peer:
        peer.send(struct.pack(">BBL", 0x01, 0, 512 * MiB) + b"\0" * 1024)
        with_more = threading.Thread(target=_flood, args=(peer.sock, 32 * MiB), daemon=True)
        with_more.start()
        kinds, after = peer.closed_within(3)
    assert kinds == [0x07] and after < 2
    assert max(plain.peak_rss_mib().values()) - before < 8
    plain.wait_log("above the limit 65536")


def _flood(sock: socket.socket, nbytes: int) -> None:
    chunk = b"\0" * 65536
    try:
        for _ in range(nbytes // len(chunk)):
            sock.sendall(chunk)
    except OSError:
        pass  # the router closed the connection: what we want


def test_p_data_above_the_advertised_max_pdu_is_aborted(plain: RouterDaemon) -> None:
    """A P-DATA-TF longer than the max PDU the router advertised (262144) is aborted."""
    with Peer(plain.port) as peer:
        peer.associate()
        peer.send(struct.pack(">BBL", 0x04, 0, 262144 + 1) + b"\0" * 4096)
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]
    assert echoscu(plain.port).returncode == 0


def test_dataset_fragment_before_any_command_is_aborted(plain: RouterDaemon) -> None:
    """Dataset PDVs with no C-STORE-RQ before them are never buffered: A-ABORT."""
    with Peer(plain.port) as peer:
        peer.associate()
        peer.send(pdata((1, 0x00, b"\0" * 60000)) * 3)
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]
    plain.wait_log("dataset fragment before a command")


def test_command_set_above_64_kib_is_aborted(plain: RouterDaemon) -> None:
    """Command fragments that never end are not buffered past 64 KiB."""
    with Peer(plain.port) as peer:
        peer.associate()
        for _ in range(3):
            peer.send(pdata((1, 0x01, b"\0" * 30000)))
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]


# --------------------------------------------------------------------------- malformed (row 7)


def test_even_presentation_context_id_is_aborted(plain: RouterDaemon) -> None:
    """A command on presentation context 2 (even: never valid, never accepted) is aborted."""
    with Peer(plain.port) as peer:
        peer.associate()
        peer.send(pdata((2, 0x03, store_rq(generate_uid()))))
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]
    plain.wait_log("presentation context 2 was not accepted")


def test_garbage_command_set_is_aborted(plain: RouterDaemon) -> None:
    """A command set that does not decode ends in A-ABORT."""
    with Peer(plain.port) as peer:
        peer.associate()
        peer.send(pdata((1, 0x03, b"\xff" * 37)))
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]
    plain.wait_log("malformed command set")


def test_unknown_command_field_is_aborted(plain: RouterDaemon) -> None:
    """A command field no DIMSE service has ends in A-ABORT."""
    with Peer(plain.port) as peer:
        peer.associate()
        peer.send(pdata((1, 0x03, command(CommandField=0x0ABC, CommandDataSetType=0x0101))))
        kinds, _ = peer.closed_within(3)
    assert kinds == [0x07]
    plain.wait_log("unknown command field 0x0ABC")


def test_presentation_context_without_transfer_syntax_gets_an_answer(
    plain: RouterDaemon,
) -> None:
    """A context with no transfer syntax item is answered (RJ or ABORT), not left waiting."""
    with Peer(plain.port) as peer:
        peer.send(associate_rq(contexts=[(1, b"1.2.840.10008.5.1.4.1.1.2", [])]))
        kinds, after = peer.closed_within(5)
    assert kinds[:1] in ([0x02], [0x03], [0x07]) and after < 5
    assert echoscu(plain.port).returncode == 0


@pytest.mark.parametrize(
    ("which", "title", "reason"),
    [("calling", b"EVIL\x1b[2J", 3), ("called", b"DICOM\x07ROUTER", 7)],
)
def test_ae_title_with_control_characters_is_rejected_and_logged_escaped(
    plain: RouterDaemon, which: str, title: bytes, reason: int
) -> None:
    """A-ASSOCIATE-RJ (AE title not recognized); the log shows the bytes escaped."""
    with Peer(plain.port) as peer:
        peer.send(associate_rq(**{which: title}))  # type: ignore[arg-type]
        kind, body = peer.read_pdu()
    assert (kind, body[1:4]) == (0x03, bytes([1, 1, reason]))
    plain.wait_log(netlayer.escaped(title.decode()))
    assert title.decode() not in plain.log()


# --------------------------------------------------------------------------- files left (row 1)


def _half_store(peer: Peer, source: Path) -> None:
    peer.associate()
    data = dataset_of(source)
    peer.send(pdata((1, 0x03, store_rq(generate_uid()))))
    peer.send(pdata((1, 0x00, data[: len(data) // 2])))


@pytest.mark.parametrize("ending", ["close", "abort", "release", "stall"])
def test_half_received_dataset_is_removed_when_the_association_ends(
    plain: RouterDaemon, ct: Path, ending: str
) -> None:
    """However the association ends mid-dataset, nothing stays in spool/incoming."""
    with Peer(plain.port) as peer:
        _half_store(peer, ct)
        assert wait_until(lambda: len(incoming(plain)) == 1, 3), "the receive never started"
        if ending == "abort":
            peer.send(ABORT)
        elif ending == "release":
            peer.send(RELEASE_RQ)
        if ending != "close":
            peer.closed_within(NETWORK_TIMEOUT + 3)
    assert wait_until(lambda: incoming(plain) == [], NETWORK_TIMEOUT + 3), incoming(plain)
    assert echoscu(plain.port).returncode == 0


# --------------------------------------------------------------------------- slots and time (row 5)


def test_40_half_sent_associate_requests_lock_out_no_sender(
    plain: RouterDaemon, ct: Path
) -> None:
    """With more half-sent A-ASSOCIATE-RQs than max_associations (32), storescu still stores."""
    rq = associate_rq()
    peers = [Peer(plain.port) for _ in range(40)]
    try:
        for peer in peers:
            peer.send(rq[:50])
        result = storescu(plain.port, [ct])
        assert result.statuses == [0x0000], result.output
        assert archived(plain, ct).is_file()
        for peer in peers:  # and each is dropped once it stalls for network_timeout
            peer.closed_within(NETWORK_TIMEOUT + 3)
    finally:
        for peer in peers:
            peer.sock.close()


def test_a_trickled_pdu_is_dropped_at_the_pdu_deadline(plain: RouterDaemon) -> None:
    """A byte every 0.5 s (never a stall) still has to finish its PDU within 10 s."""
    trickle = pdata((1, 0x03, store_rq(generate_uid())))
    with Peer(plain.port, timeout=20) as peer:
        peer.associate()
        start = time.monotonic()
        for byte in trickle:
            try:
                peer.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.5)
            if time.monotonic() - start > netlayer.PDU_DEADLINE + 3:
                break
        peer.closed_within(3)
        took = time.monotonic() - start
    assert netlayer.PDU_DEADLINE - 1 <= took <= netlayer.PDU_DEADLINE + 3
    plain.wait_log(f"PDU not complete within {netlayer.PDU_DEADLINE:.0f} s")


def test_sigterm_with_half_open_and_stalled_clients_exits_within_the_drain_time(
    router: Callable[..., RouterDaemon], ct: Path
) -> None:
    """Whatever clients do (half-sent RQs, a stalled dataset), SIGTERM exits 0 in seconds."""
    daemon = router(rule_file().replace("network_timeout: 2s", "network_timeout: 60s"))
    peers = [Peer(daemon.port) for _ in range(10)]
    for peer in peers:
        peer.send(associate_rq()[:50])
    stalled = Peer(daemon.port)
    _half_store(stalled, ct)
    try:
        start = time.monotonic()
        code = daemon.stop(timeout=30)
        took = time.monotonic() - start
    finally:
        for peer in [*peers, stalled]:
            peer.sock.close()
    # DRAIN_SECONDS (10) for the association mid-dataset, then aborted.
    assert code == 0 and took < 15, took
    assert list((daemon.workdir / "spool" / "incoming").iterdir()) == []


# --------------------------------------------------------------------------- idle CPU (row 6)


def test_100_silent_associations_cost_at_most_5_percent_of_a_core(
    router: Callable[..., RouterDaemon],
) -> None:
    """Established associations that send nothing wait on events, not polling loops."""
    daemon = router(
        rule_file().replace("network_timeout: 2s", "network_timeout: 60s, max_associations: 110")
    )
    peers = [Peer(daemon.port) for _ in range(100)]
    try:
        for peer in peers:
            peer.associate()
        time.sleep(1.0)
        before, start = daemon.cpu_seconds(), time.monotonic()
        time.sleep(4.0)
        cores = (daemon.cpu_seconds() - before) / (time.monotonic() - start)
    finally:
        for peer in peers:
            peer.sock.close()
    print(f"100 idle associations: {cores:.3f} cores")  # shown with -s, for the notes
    assert cores <= 0.05, f"{cores:.3f} cores for 100 idle associations"


# --------------------------------------------------------------------------- backlog (row 11)


def test_listen_backlog_is_somaxconn(plain: RouterDaemon) -> None:
    """The listening socket's backlog is the kernel's maximum, not socketserver's 5."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{plain.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    limit = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(out[2]) == min(socket.SOMAXCONN, limit)


# --------------------------------------------------------------------------- disk full (row 12)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (needs root, as CI is)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_filling_during_a_receive_answers_a700_and_leaves_nothing(
    router: Callable[..., RouterDaemon], small_disk: Path, tmp_path: Path, ct: Path
) -> None:
    """ENOSPC mid-dataset: the rest is drained, 0xA700 answered, the partial file removed."""
    config = rule_file(spool_min_free="1MiB").replace(
        "spool_min_free", f"spool: {small_disk}/spool\nspool_min_free"
    )
    daemon = router(config)
    big = tmp_path / "big.dcm"
    make_multiframe(big, 40 * MiB)
    result = storescu(daemon.port, [big, ct])
    assert result.statuses == [0xA700, 0x0000], result.output
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    assert "Traceback" not in daemon.log()
    daemon.wait_log("status=0xA700")


# --------------------------------------------------------------------------- after all of it


def test_no_traceback_was_printed_and_echo_still_works(plain: RouterDaemon) -> None:
    """After every hostile input above, the daemon answers C-ECHO and logged no traceback."""
    assert echoscu(plain.port).returncode == 0
    assert "Traceback" not in plain.log()
    with socket.create_connection((LOOPBACK, plain.port), timeout=5):
        pass
