"""Queued and sync forwarding with real peers (design §4 forward, §5, §7; operations.md).

Every test runs the real daemon (`dicom-router run`) on 127.0.0.1 and talks to it with
DCMTK's storescu; destinations are Orthanc, DCMTK's storescp, or a small pynetdicom SCP
written here whose C-STORE answers each test scripts. The spool is inspected through the
CLI (`queue`, `trace`) and, read-only, through its SQLite queue.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance, make_multiframe, make_series
from tests.peers import (
    LOOPBACK,
    FileOutcome,
    Orthanc,
    ScriptedSCP,
    StoreSCP,
    _descendants,
    free_port,
    storescu,
)

pytestmark = pytest.mark.interop

DICOM_ROUTER = Path(sys.executable).parent / "dicom-router"
SMALL = 8 * 1024  # pixel bytes of the many-instance tests: ~8.5 KiB files
STUDY = "1.2.826.0.1.3680043.8.498.1000"
FAST_RETRY = "{initial_delay: 0.2s, max_delay: 1s}"
# pynetdicom 3.0's requestor reactor can swallow a C-STORE-RSP (a race between
# send_c_store's pause and the reactor loop: "Received unexpected C-STORE service
# message"); the router then waits dimse_timeout (60 s by default) before resending.
# Bulk tests use a short one so that such a stall costs seconds, not the test budget.
BULK = {"dimse_timeout": "5s"}

Router = Callable[..., RouterDaemon]


# --------------------------------------------------------------------------- rule files


def dest(ae_title: str, port: int, **extra: str) -> str:
    """A DICOM destination as a YAML flow mapping; `extra` values are YAML text."""
    fields = {"ae_title": ae_title, "host": LOOPBACK, "port": str(port), "retry": FAST_RETRY}
    fields.update(extra)
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def rule_file(destinations: dict[str, str], default: Sequence[str]) -> str:
    """A rule file listening on {port}, spooling next to it, with these destinations,
    no rules and `default` as its YAML action items (`forward: pacs`).

    One receiving process (`workers: 1`): these tests are about the forwarder, and a
    daemon with workers starts a second after it; receiving workers have their own tests
    (tests/test_workers.py, and the SCP, hostile-input, lifecycle and metrics tests run
    with the default).
    """
    lines = [
        "version: 1",
        "listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}",
        "spool: spool",
        "spool_min_free: 1MiB",
        "destinations:",
        *(f"  {name}: {spec}" for name, spec in destinations.items()),
        "rules: []",
        "default:",
        *(f"  - {action}" for action in default),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the CLI


def cli(d: RouterDaemon, *args: str, check: bool = True) -> str:
    """Run `dicom-router ARGS` next to the daemon's rule file; return stdout."""
    done = subprocess.run(
        [str(DICOM_ROUTER), *args],
        cwd=d.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"dicom-router {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class Row:
    """One line of `queue list`."""

    uid: str
    destination: str
    state: str
    tries: int
    error: str


_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(pending|dead)\s+(\d+)\s+\S+  (.*)$")
_SUMMARY = re.compile(r"^(\S+): (\d+) pending, (\d+) dead letters$")


def queue_list(d: RouterDaemon, *extra: str) -> tuple[list[Row], dict[str, tuple[int, int]]]:
    """`queue FILE list`: its rows and, per destination, (pending, dead letters)."""
    out = cli(d, "queue", str(d.config_path), "list", *extra)
    lines = out.splitlines()
    assert lines and lines[0].startswith("SOP Instance UID"), out
    rows, summary = [], {}
    for line in lines[1:]:
        if m := _SUMMARY.match(line):
            summary[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        elif m := _ROW.match(line):
            uid, name, state, tries, error = m.groups()
            rows.append(Row(uid, name, state, int(tries), error.strip()))
        else:
            raise AssertionError(f"unexpected queue list line {line!r}:\n{out}")
    return rows, summary


@dataclass
class DeliveryRow:
    """One row of the spool's `deliveries` table, with its instance's UID."""

    uid: str
    destination: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None


def deliveries(d: RouterDaemon) -> list[DeliveryRow]:
    """Every delivery of the daemon's spool (read-only; the daemon may be running)."""
    db = sqlite3.connect(f"file:{d.workdir / 'spool' / 'queue.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT o.sop_instance_uid, d.destination, d.state, d.attempts, d.last_status,"
            " d.last_error FROM deliveries d JOIN objects o ON o.id = d.object_id ORDER BY d.id"
        ).fetchall()
    finally:
        db.close()
    return [DeliveryRow(*r) for r in rows]


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def states(d: RouterDaemon, destination: str) -> list[str]:
    """The states of a destination's deliveries, oldest first."""
    return [r.state for r in deliveries(d) if r.destination == destination]


def spooled_files(d: RouterDaemon) -> list[Path]:
    """Files left in the spool's objects/ folder."""
    return sorted((d.workdir / "spool" / "objects").iterdir())


@pytest.fixture(autouse=True)
def _dcmtk_nodelay(monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP_NODELAY=1 in the environment of the peers started by this module's fixtures.

    DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment;
    peers.Orthanc does not set it, so each C-STORE-RSP from Orthanc waits for a delayed
    ACK (~20 instances/s instead of ~350/s). Autouse fixtures run before `orthanc`.
    """
    monkeypatch.setenv("TCP_NODELAY", "1")


# --------------------------------------------------------------------------- instances


@pytest.fixture(scope="module")
def small_instances(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """1000 small CT instances of one study, shared read-only by the tests: (path, UID).

    One is written by make_instance; the others are copies with their own SOP Instance
    UID and instance number (make_instance builds a 4 MiB pixel pattern per call: 25 s).
    """
    folder = tmp_path_factory.mktemp("small")
    template = folder / "0001.dcm"
    make_instance(template, pixel_bytes=SMALL, study_uid=STUDY, series_uid=STUDY + ".1")
    ds = dcmread(template)
    out = [(template, str(ds.SOPInstanceUID))]
    for number in range(2, 1001):
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = number
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, str(uid)))
    return out


def one_instance(tmp_path: Path, name: str = "ct.dcm", **kw: Any) -> tuple[Path, str]:
    """Write one small instance (CT unless `sop_class_uid` says otherwise)."""
    path = tmp_path / name
    uid = make_instance(path, pixel_bytes=SMALL, **kw)
    return path, str(uid)


def send(d: RouterDaemon, files: Sequence[Path], **kw: Any) -> list[int | None]:
    """storescu the files to the router; the status each one got (None: no answer)."""
    result = storescu(d.port, files, **kw)
    by_path = {f.path: f.status for f in result.files}
    return [by_path.get(str(p)) for p in files]


def dataset_offset(path: Path) -> int:
    """Where the dataset of a Part-10 file starts: preamble, DICM, group length, group 2."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a (small) Part-10 file: what follows the file meta group."""
    return path.read_bytes()[dataset_offset(path) :]


# =========================================================================== tests


def test_500_instances_reach_both_destinations_and_the_spool_empties(
    router: Router,
    orthanc: Orthanc,
    store_scp: StoreSCP,
    small_instances: list[tuple[Path, str]],
) -> None:
    """500 instances queued for Orthanc and storescp: all 0x0000, all delivered to both,
    objects/ ends empty and `queue list` shows nothing pending."""
    files = [p for p, _ in small_instances[:500]]
    d = router(
        rule_file(
            {
                "orthanc": dest("ORTHANC", orthanc.dicom_port, **BULK),
                "scp": dest("STORESCP", store_scp.port, **BULK),
            },
            ["forward: orthanc", "forward: scp"],
        )
    )
    result = storescu(d.port, files)
    assert result.statuses == [0] * 500, result.output[-2000:]

    orthanc.wait_count(500, timeout=60)
    store_scp.wait_count(500, timeout=60)
    wanted = {uid for _, uid in small_instances[:500]}
    assert set(orthanc.instances()) == wanted
    assert len(set(store_scp.received())) == 500

    wait_until("objects/ to empty", lambda: not spooled_files(d), timeout=20)
    rows, summary = queue_list(d)
    assert rows == []
    assert summary == {"orthanc": (0, 0), "scp": (0, 0)}


def test_destination_down_queues_then_delivers_without_counting_attempts(
    router: Router, tmp_path: Path, small_instances: list[tuple[Path, str]]
) -> None:
    """200 instances for a PACS that is down: spooled (0x0000), pending with 0 tries and
    the unreachable error; once it listens all 200 arrive, nothing dead-lettered, one
    counted attempt each."""
    port = free_port()  # nothing listens here (yet)
    files = [p for p, _ in small_instances[:200]]
    d = router(rule_file({"pacs": dest("ORTHANC", port, **BULK)}, ["forward: pacs"]))

    assert send(d, files) == [0] * 200
    d.wait_log("destination pacs unreachable")
    rows, summary = queue_list(d)
    assert summary == {"pacs": (200, 0)}
    assert len(rows) == 200
    assert {(r.destination, r.state, r.tries) for r in rows} == {("pacs", "pending", 0)}
    errors = [r.error for r in rows if r.error]
    assert errors, "no pending row says why it is pending"
    assert all(f"ORTHANC@127.0.0.1:{port}" in e for e in errors), errors

    pacs = Orthanc(tmp_path / "late-orthanc", dicom_port=port)
    pacs.start()
    try:
        pacs.wait_count(200, timeout=40)
        assert set(pacs.instances()) == {uid for _, uid in small_instances[:200]}
        wait_until("200 delivered", lambda: states(d, "pacs") == ["delivered"] * 200)
    finally:
        pacs.stop()
    rows, summary = queue_list(d)
    assert rows == []
    assert summary == {"pacs": (0, 0)}
    assert {r.attempts for r in deliveries(d)} == {1}


def _pending(d: RouterDaemon) -> int:
    """Deliveries waiting in the spool right now (read straight from its database)."""
    db = sqlite3.connect(f"file:{d.workdir / 'spool' / 'queue.db'}?mode=ro", uri=True, timeout=5)
    try:
        (n,) = db.execute("SELECT count(*) FROM deliveries WHERE state='pending'").fetchone()
    finally:
        db.close()
    return int(n)


def test_kill9_during_a_stream_loses_no_acknowledged_instance(
    router: Router, orthanc: Orthanc, small_instances: list[tuple[Path, str]]
) -> None:
    """kill -9 of the daemon three times while 1000 instances stream in: every instance
    the sender saw acknowledged with 0x0000 reaches Orthanc after the restarts."""
    uid_of = {str(p): uid for p, uid in small_instances}
    d = router(rule_file({"pacs": dest("ORTHANC", orthanc.dicom_port, **BULK)}, ["forward: pacs"]))
    acked: set[str] = set()
    progress = threading.Condition()  # notified at each acknowledgement and at the end
    todo = [p for p, _ in small_instances]
    done = threading.Event()
    deadline = time.monotonic() + 150  # a bound, not a measure: one loaded core takes ~50 s

    def on_response(outcome: FileOutcome) -> None:
        if outcome.status == 0:
            with progress:
                acked.add(uid_of[outcome.path])
                progress.notify_all()

    def sender() -> None:
        # A modality: send in batches of 50 associations; resend what got no 0x0000.
        nonlocal todo
        try:
            while todo and time.monotonic() < deadline:
                result = storescu(d.port, todo[:50], timeout=30, on_response=on_response)
                todo = [p for p in todo if uid_of[str(p)] not in acked]
                if result.request_failed:
                    time.sleep(0.05)  # the router is restarting: a modality retries soon after
        finally:
            done.set()
            with progress:
                progress.notify_all()

    thread = threading.Thread(target=sender, name="sender", daemon=True)
    thread.start()
    rng = random.Random(20261127)
    # Kills after the Nth acknowledgement (not after a sleep): mid-stream at any machine speed.
    targets = [rng.randint(100, 250), rng.randint(350, 500), rng.randint(600, 750)]
    kills: list[tuple[int, int]] = []  # (acknowledged, pending in the spool) when killed
    for target in targets:
        with progress:
            progress.wait_for(lambda t=target: done.is_set() or len(acked) >= t, timeout=60)
        # ... and while the forwarder has deliveries queued, so that it is killed at work.
        wait_until("a delivery pending", lambda: done.is_set() or _pending(d) > 0)
        if done.is_set():
            break
        kills.append((len(acked), _pending(d)))
        d.kill9()
        d.start()
    thread.join(180)
    assert not thread.is_alive()
    assert len(kills) == 3, f"the stream ended before the 3rd kill: {kills}"
    assert kills[-1][0] < 1000, kills
    assert any(pending > 0 for _, pending in kills), (
        f"no kill hit the forwarder mid-queue: {kills}"
    )
    assert len(acked) == 1000, f"only {len(acked)} acknowledged within the time budget"

    orthanc.wait_count(len(acked), timeout=30)
    wait_until(
        "every acknowledged instance in Orthanc",
        lambda: acked <= set(orthanc.instances()),
        timeout=30,
    )


def test_permanent_rejection_is_a_dead_letter_until_queue_retry(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """0x0124 from the destination: dead letter at once (state dead, status shown); after
    the PACS is fixed, `queue retry` delivers it exactly once more."""
    pacs = scripted(status=0x0124)
    path, uid = one_instance(tmp_path)
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: pacs"]))

    assert send(d, [path]) == [0]
    wait_until("a dead letter", lambda: states(d, "pacs") == ["dead"])
    rows, summary = queue_list(d)
    assert [(r.uid, r.destination, r.state, r.tries) for r in rows] == [(uid, "pacs", "dead", 1)]
    assert "0x0124" in rows[0].error
    assert summary == {"pacs": (0, 1)}
    assert pacs.answered(uid) == [0x0124]
    assert [p.name for p in spooled_files(d)], "a dead letter keeps its file"

    pacs.status = 0x0000
    out = cli(d, "queue", str(d.config_path), "retry")
    assert out.strip() == "1 dead letters queued again, 0 waiting deliveries due now"
    wait_until("delivery after retry", lambda: states(d, "pacs") == ["delivered"])
    time.sleep(0.5)  # nothing else may follow
    assert pacs.answered(uid) == [0x0124, 0x0000]
    assert queue_list(d) == ([], {"pacs": (0, 0)})
    assert spooled_files(d) == []


def test_out_of_resources_answers_are_retried_until_delivered(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """0xA700 twice then 0x0000: retried with backoff and delivered on the 3rd attempt."""
    pacs = scripted(script=[0xA700, 0xA700])
    path, uid = one_instance(tmp_path)
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: pacs"]))

    assert send(d, [path]) == [0]
    wait_until("delivery", lambda: states(d, "pacs") == ["delivered"])
    assert pacs.answered(uid) == [0xA700, 0xA700, 0x0000]
    (row,) = deliveries(d)
    assert (row.attempts, row.last_status) == (3, 0x0000)
    assert d.log().count(f"delivery {uid} to pacs: retry status=0xA700") == 2


def test_retries_end_in_dead_letters_after_max_attempts(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """A destination that keeps answering 0xA701: dead letter after max_attempts (3)."""
    pacs = scripted(status=0xA701)
    path, uid = one_instance(tmp_path)
    retry = "{max_attempts: 3, initial_delay: 0.2s, max_delay: 1s}"
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port, retry=retry)}, ["forward: pacs"]))

    assert send(d, [path]) == [0]
    wait_until("a dead letter", lambda: states(d, "pacs") == ["dead"])
    time.sleep(0.5)
    assert pacs.answered(uid) == [0xA701] * 3
    rows, summary = queue_list(d)
    assert [(r.state, r.tries) for r in rows] == [("dead", 3)]
    assert "gave up after 3 attempts" in rows[0].error and "0xA701" in rows[0].error
    assert summary == {"pacs": (0, 1)}


def test_on_status_override_makes_0x0124_retried(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """`on_status: {0x0124: retry}`: a 0x0124 answer is retried, not dead-lettered."""
    pacs = scripted(script=[0x0124, 0x0124])
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file(
            {"pacs": dest(pacs.ae_title, pacs.port, on_status="{0x0124: retry}")},
            ["forward: pacs"],
        )
    )

    assert send(d, [path]) == [0]
    wait_until("delivery", lambda: states(d, "pacs") == ["delivered"])
    assert pacs.answered(uid) == [0x0124, 0x0124, 0x0000]
    assert deliveries(d)[0].attempts == 3


def test_each_destination_keeps_its_own_progress(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """A accepts at once, B answers 0xA700 then accepts: A gets the instance exactly once,
    B eventually; B's retry never resends to A."""
    a = scripted(ae_title="PACS_A")
    b = scripted(ae_title="PACS_B", script=[0xA700, 0xA700])
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file(
            {"a": dest(a.ae_title, a.port), "b": dest(b.ae_title, b.port)},
            ["forward: a", "forward: b"],
        )
    )

    assert send(d, [path]) == [0]
    wait_until("delivery to b", lambda: states(d, "b") == ["delivered"])
    time.sleep(0.5)
    assert a.answered(uid) == [0x0000]
    assert b.answered(uid) == [0xA700, 0xA700, 0x0000]
    assert states(d, "a") == ["delivered"]
    wait_until("objects/ to empty", lambda: not spooled_files(d))


# --- sync mode -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [0xA701, 0x0124, 0xB000, 0x0000],
    ids=["0xA701", "0x0124", "0xB000", "0x0000"],
)
def test_sync_forward_relays_the_destination_status(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path, answer: int
) -> None:
    """mode: sync: the sender's C-STORE gets exactly what the destination answered."""
    pacs = scripted(status=answer)
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: {to: pacs, mode: sync}"])
    )
    assert send(d, [path]) == [answer]
    assert pacs.answered(uid) == [answer]
    assert deliveries(d) == []  # sync forwards are not queued


def test_sync_forward_success_delivers_the_bytes_sent(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """mode: sync, success: the sender gets 0x0000 and the SCP received the dataset as sent."""
    pacs = scripted()
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: {to: pacs, mode: sync}"])
    )
    assert send(d, [path]) == [0x0000]
    ts, raw = pacs.received[uid]
    assert ts == ExplicitVRLittleEndian
    assert raw == dataset_bytes(path)


def test_sync_forward_to_a_down_destination_answers_0xa700(router: Router, tmp_path: Path) -> None:
    """mode: sync to a destination nobody listens on: the sender gets 0xA700."""
    path, _ = one_instance(tmp_path)
    d = router(
        rule_file(
            {"pacs": dest("PACS", free_port(), connect_timeout="2s")},
            ["forward: {to: pacs, mode: sync}"],
        )
    )
    assert send(d, [path]) == [0xA700]


# --- presentation contexts and transfer syntaxes -------------------------------------


def test_unsupported_sop_class_is_a_dead_letter_and_does_not_block_the_queue(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """A PACS that supports CT only: the MR becomes a dead letter ("no accepted
    presentation context"), and the CT queued behind it is still delivered."""
    pacs = scripted(sop_classes=[CTImageStorage])
    mr, mr_uid = one_instance(tmp_path, "mr.dcm", sop_class_uid=MRImageStorage)
    ct, ct_uid = one_instance(tmp_path, "ct.dcm")
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: pacs"]))

    assert send(d, [mr, ct]) == [0, 0]
    wait_until(
        "both deliveries finished",
        lambda: sorted(states(d, "pacs")) == ["dead", "delivered"],
        timeout=10,
    )
    assert pacs.accepted(ct_uid) == 1
    assert pacs.answered(mr_uid) == []
    rows, summary = queue_list(d)
    assert [(r.uid, r.state) for r in rows] == [(mr_uid, "dead")]
    assert "no accepted presentation context" in rows[0].error
    assert summary == {"pacs": (0, 1)}


class StrictStoreSCP(StoreSCP):
    """storescp without -pm: only the SOP classes DCMTK knows."""

    def argv(self) -> list[str]:
        """StoreSCP's command line minus the promiscuous flag."""
        return [a for a in super().argv() if a != "-pm"]


def test_unsupported_sop_class_at_storescp_is_a_dead_letter(router: Router, tmp_path: Path) -> None:
    """storescp without -pm does not know a private SOP class: dead letter with "no
    accepted presentation context", the CT behind it delivered."""
    scp = StrictStoreSCP(tmp_path / "strict-storescp").start()
    try:
        private, private_uid = one_instance(
            tmp_path, "private.dcm", sop_class_uid="1.2.826.0.1.3680043.8.498.999.1"
        )
        ct, _ = one_instance(tmp_path, "ct.dcm")
        d = router(rule_file({"scp": dest("STORESCP", scp.port)}, ["forward: scp"]))
        assert send(d, [private, ct]) == [0, 0]
        scp.wait_count(1, timeout=10)
        wait_until("the private instance dead", lambda: "dead" in states(d, "scp"), timeout=5)
        rows, _ = queue_list(d)
        assert [(r.uid, r.state) for r in rows] == [(private_uid, "dead")]
        assert "no accepted presentation context" in rows[0].error
    finally:
        scp.stop()


def test_explicit_file_is_converted_for_an_implicit_only_destination(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """The PACS accepts only Implicit VR LE, the file is Explicit VR LE: delivered in
    Implicit VR LE, and the dataset received equals the one sent."""
    pacs = scripted(sop_classes=[CTImageStorage], transfer_syntaxes=[ImplicitVRLittleEndian])
    path, uid = one_instance(tmp_path)
    d = router(rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: pacs"]))

    assert send(d, [path]) == [0]
    wait_until("delivery", lambda: states(d, "pacs") == ["delivered"])
    ts, raw = pacs.received[uid]
    assert ts == ImplicitVRLittleEndian
    sent = dcmread(path)
    got = _decode(raw, implicit=True)
    assert {e.tag: e.value for e in got} == {e.tag: e.value for e in sent}


def _decode(raw: bytes, *, implicit: bool) -> Dataset:
    """Decode a little-endian dataset's bytes."""
    return read_dataset(BytesIO(raw), is_implicit_VR=implicit, is_little_endian=True)


# --- trace ---------------------------------------------------------------------------


def test_trace_shows_arrival_rule_status_config_and_delivery(
    router: Router, store_scp: StoreSCP, tmp_path: Path
) -> None:
    """`trace FILE <StudyInstanceUID>`: per instance its arrival, rule, status 0x0000,
    config version, and "delivered" for the destination."""
    study = "1.2.826.0.1.3680043.8.498.4242"
    files = make_series(tmp_path / "study", 3, study_uid=study, size=SMALL)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    d = router(rule_file({"scp": dest("STORESCP", store_scp.port)}, ["forward: scp"]))
    check = cli(d, "check", str(d.config_path))
    version = re.search(r"config version ([0-9a-f]+)", check)
    assert version, check

    assert send(d, files) == [0, 0, 0]
    wait_until("3 deliveries", lambda: states(d, "scp") == ["delivered"] * 3)
    out = cli(d, "trace", str(d.config_path), study)
    for uid in uids:
        arrival = [line for line in out.splitlines() if not line.startswith(" ") and uid in line]
        assert len(arrival) == 1, out
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", arrival[0]), arrival
        assert "CTImageStorage from STORESCU@127.0.0.1 to DICOM_ROUTER" in arrival[0]
        assert "rule default [forward:scp] status 0x0000" in arrival[0]
        assert f"config {version.group(1)}" in arrival[0]
        assert f"  -> scp: {uid} delivered after 1 attempt(s), last status 0x0000" in out


# --- memory --------------------------------------------------------------------------


def _vm_hwm_mib(pid: int) -> float:
    """Peak resident set size of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _forwarder_pid(daemon_pid: int) -> int:
    """The forwarder: the daemon's descendant named dr-forwarder."""

    def spawned() -> list[int]:
        found = []
        for pid, _ in _descendants(daemon_pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "dr-forwarder":
                    found.append(pid)
        return found

    (pid,) = wait_until("the forwarder process", spawned, timeout=10)
    return int(pid)


@pytest.mark.slow
def test_1gb_multiframe_is_forwarded_with_flat_memory(
    router: Router, store_scp: StoreSCP, tmp_path: Path
) -> None:
    """A 1 GB multi-frame object queued for storescp: delivered whole, and no process of
    the daemon (main, workers, forwarder) ever holds more than 200 MiB resident."""
    big = tmp_path / "big.dcm"
    make_multiframe(big, 1024**3)
    d = router(rule_file({"scp": dest("STORESCP", store_scp.port)}, ["forward: scp"]))
    assert d.proc is not None
    forwarder = _forwarder_pid(d.proc.pid)

    assert send(d, [big]) == [0]
    store_scp.wait_count(1, timeout=60)
    wait_until("delivered", lambda: states(d, "scp") == ["delivered"], timeout=20)
    peaks = {"forwarder": _vm_hwm_mib(forwarder), **d.peak_rss_mib()}
    assert all(peak <= 200 for peak in peaks.values()), peaks

    (received,) = store_scp.files()
    size = big.stat().st_size - dataset_offset(big)
    assert received.stat().st_size - dataset_offset(received) == size
    with big.open("rb") as a, received.open("rb") as b:  # the last MiB, byte for byte
        a.seek(-(1 << 20), 2)
        b.seek(-(1 << 20), 2)
        assert a.read() == b.read()


def test_queue_purge_all_drops_a_destinations_pending_deliveries(
    router: Router, small_instances: list[tuple[Path, str]]
) -> None:
    """`queue purge` keeps pending rows; `queue purge --all --destination X` drops X's pending
    deliveries (e.g. of a removed destination) and their spooled files, and only X's."""
    down, other = free_port(), free_port()  # nothing listens on either
    files = [p for p, _ in small_instances[:5]]
    d = router(
        rule_file(
            {"gone": dest("GONE", down, **BULK), "kept": dest("KEPT", other, **BULK)},
            ["forward: gone", "forward: kept"],
        )
    )
    assert send(d, files) == [0] * 5
    assert "0 dead letters purged" in cli(d, "queue", str(d.config_path), "purge")
    assert queue_list(d)[1] == {"gone": (5, 0), "kept": (5, 0)}
    out = cli(d, "queue", str(d.config_path), "purge", "--all", "--destination", "gone")
    assert "5 deliveries purged" in out
    assert queue_list(d)[1] == {"kept": (5, 0)}
    assert len(list((d.workdir / "spool" / "objects").glob("*.dcm"))) == 5  # kept needs them
