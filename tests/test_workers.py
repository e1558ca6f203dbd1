"""`listen.workers`: several receiving processes on one port, supervised by the main process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct, make_multiframe
from tests.peers import FileOutcome, _descendants, _listens_on, storescu
from tests.test_hostile_network import wait_until
from tests.test_scp import archived, rule_file
from tests.ul import Peer, associate_rq

pytestmark = pytest.mark.interop

MiB = 1024 * 1024


def with_workers(n: int, config: str | None = None, **listen: object) -> str:
    """rule_file() (or `config`) with `workers: n` and more listen keys."""
    extra = "".join(f", {key}: {value}" for key, value in {"workers": n, **listen}.items())
    return (config or rule_file()).replace("network_timeout: 2s", f"network_timeout: 2s{extra}")


def workers(daemon: RouterDaemon) -> list[int]:
    """PIDs of the daemon's descendants that listen on its port: its receiving workers."""
    assert daemon.proc is not None
    return sorted(pid for pid, _ in _descendants(daemon.proc.pid) if _listens_on(pid, daemon.port))


@pytest.fixture
def cts(tmp_path: Path) -> list[Path]:
    """Eight small CT instances."""
    paths = [tmp_path / "cts" / f"ct{i}.dcm" for i in range(8)]
    for path in paths:
        make_ct(path, size=16 * 1024)
    return paths


def test_two_workers_listen_on_the_port_and_the_main_process_does_not(
    router: Callable[..., RouterDaemon],
) -> None:
    """With workers: 2, two processes listen on the port, not the main one; logged once."""
    daemon = router(with_workers(2))
    assert wait_until(lambda: len(workers(daemon)) == 2, 10)
    assert daemon.proc is not None and not _listens_on(daemon.proc.pid, daemon.port)
    daemon.wait_log("2 workers")
    assert daemon.log().count("listening on") == 1


def test_default_workers_are_the_cpus_the_daemon_may_run_on(
    router: Callable[..., RouterDaemon],
) -> None:
    """Started on one CPU (taskset, systemd CPUAffinity=), the daemon defaults to 1 worker."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # inherited by the daemon started now
    try:
        daemon = router(rule_file())
    finally:
        os.sched_setaffinity(0, allowed)
    daemon.wait_log("1 worker,")
    assert not workers(daemon)  # the main process receives itself


def test_parallel_senders_are_stored_by_the_workers(
    router: Callable[..., RouterDaemon], cts: list[Path]
) -> None:
    """Eight senders at once, spread over two workers: every instance stored."""
    daemon = router(with_workers(2))
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda p=p: results.append(storescu(daemon.port, [p]).statuses))
        for p in cts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [[0x0000]] * 8
    assert all(archived(daemon, p).is_file() for p in cts)


def test_reload_reaches_every_worker(
    router: Callable[..., RouterDaemon], cts: list[Path]
) -> None:
    """After a reload to a reject rule, every association, whichever worker, is refused."""
    daemon = router(with_workers(2))
    daemon.write_config(with_workers(2, rule_file(default="[{reject: 0xA701}]")))
    daemon.wait_log("reloaded")
    time.sleep(0.5)  # the workers read their pipes every 0.5 s at the latest
    statuses = [storescu(daemon.port, [p]).statuses for p in cts]
    assert statuses == [[0xA701]] * 8


def test_max_associations_counts_over_all_workers(router: Callable[..., RouterDaemon]) -> None:
    """max_associations: 3 with two workers: the 4th and 5th associations are rejected."""
    daemon = router(with_workers(2, max_associations=3))
    assert wait_until(lambda: len(workers(daemon)) == 2, 10)
    peers = [Peer(daemon.port) for _ in range(5)]
    try:
        answers = []
        for peer in peers:
            peer.send(associate_rq())
            kind, body = peer.read_pdu()
            answers.append((kind, body[1:4] if kind == 0x03 else b""))
    finally:
        for peer in peers:
            peer.sock.close()
    assert answers.count((0x02, b"")) == 3
    assert answers.count((0x03, bytes([2, 3, 2]))) == 2


def test_a_dead_worker_is_logged_and_restarted(
    router: Callable[..., RouterDaemon], cts: list[Path]
) -> None:
    """kill -9 of a worker: the main process logs it and starts another; stores go on."""
    daemon = router(with_workers(2))
    assert wait_until(lambda: len(workers(daemon)) == 2, 10)
    victim = workers(daemon)[0]
    os.kill(victim, signal.SIGKILL)
    daemon.wait_log(f"(pid {victim}) exited (code -9): restarting", timeout=10)
    assert wait_until(lambda: len(workers(daemon)) == 2 and victim not in workers(daemon), 20)
    assert [storescu(daemon.port, [p]).statuses for p in cts[:4]] == [[0x0000]] * 4


def test_kill9_of_a_worker_mid_stream_loses_no_acknowledged_instance(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """Every instance a sender saw acknowledged survives kill -9 of the worker storing it."""
    daemon = router(with_workers(2))
    assert wait_until(lambda: len(workers(daemon)) == 2, 10)
    victims = workers(daemon)
    files = [tmp_path / "stream" / f"ct{i:03d}.dcm" for i in range(150)]
    for path in files:
        make_ct(path, size=64 * 1024)
    acks = 0

    def on_response(outcome: FileOutcome) -> None:
        # The 20th acknowledgement, not a clock: mid-stream on a fast machine or a slow one.
        nonlocal acks
        acks += outcome.status == 0
        if acks == 20:
            for pid in victims:
                os.kill(pid, signal.SIGKILL)

    result = storescu(daemon.port, files, timeout=60, on_response=on_response)
    acked = [f for f, r in zip(files, result.files, strict=False) if r.status == 0]
    assert 0 < len(acked) < len(files), "the kill did not land mid-stream"
    for path in acked:
        stored = archived(daemon, path)
        assert stored.is_file(), f"acknowledged {path.name} is lost"
        assert dcmread(stored).SOPInstanceUID == dcmread(path).SOPInstanceUID


def test_sigterm_lets_every_worker_finish_its_transfer(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """SIGTERM mid-transfer: the worker receiving a 100 MB instance finishes it, then all exit 0."""
    daemon = router(with_workers(2))
    big = tmp_path / "big.dcm"
    make_multiframe(big, 100 * MiB)
    results: list[list[int]] = []
    sender = threading.Thread(target=lambda: results.append(storescu(daemon.port, [big]).statuses))
    sender.start()
    assert wait_until(
        lambda: any((daemon.workdir / "spool" / "incoming").iterdir()), 10
    ), "the transfer never started"
    start = time.monotonic()
    assert daemon.stop(timeout=40) == 0
    sender.join(30)
    assert results == [[0x0000]] and archived(daemon, big).is_file()
    assert time.monotonic() - start < 25


def test_workers_and_the_forwarder_are_named_for_ps(router: Callable[..., RouterDaemon]) -> None:
    """`ps -o comm` and `pgrep` tell the receiving workers and the forwarder apart."""
    daemon = router(with_workers(2))
    assert wait_until(lambda: len(workers(daemon)) == 2, 10)
    assert daemon.proc is not None

    def names() -> list[str]:
        assert daemon.proc is not None
        found = []
        for pid, _ in _descendants(daemon.proc.pid):
            with contextlib.suppress(OSError):
                found.append(Path(f"/proc/{pid}/comm").read_text().strip())
        return sorted(n for n in found if n.startswith("dr-"))

    assert wait_until(lambda: names() == ["dr-forwarder", "dr-worker-0", "dr-worker-1"], 10)
