"""Run fuzz cases against a real `dicom-router run` and check what it must never do.

Client threads share the cases: a quarter take the dataset cases, the rest the PDU
cases. A client keeps its association across cases while it survives (replacing one
left idle too long), opens a fresh connection for every A-ASSOCIATE-RQ case, and a fresh
association for every deflate bomb. When the router stops answering a case, the client
half-closes (the router sees EOF, as from a sender that gave up) and the router must
then close the connection; a stall case instead stays connected and silent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from tests.daemon import RouterDaemon
from tests.fuzz.cases import Case, contexts, make_case
from tests.fuzz.pdus import IN_MUTATIONS, RQ_MUTATIONS
from tests.fuzz.proxy import PROXY_MUTATIONS, PROXY_STALLS, TRUSTED
from tests.fuzz.ul import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    Connection,
    Reply,
    associate_rq,
    echo_rq,
    p_data_message,
    pdu,
    pdv,
    release_rq,
    store_rq,
)
from tests.peers import _descendants

NETWORK_TIMEOUT = 1.0
ANSWER = 0.25  # how long a client waits for an answer to a broken PDU before giving up
STORE_ANSWER = 20.0  # a well-framed C-STORE must always be answered, bombs included
CLOSE_GRACE = NETWORK_TIMEOUT + 3.0  # after our EOF, the router must close by then

RULE_FILE = """\
version: 1
listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, network_timeout: 1s,
         max_associations: 64, proxy_protocol: {trusted: [127.0.0.2/32]}}
spool_min_free: 1MiB
destinations:
  archive: {path: "archive/{SOPInstanceUID}.dcm"}
default: [{store: archive}]
"""


@dataclass
class Result:
    """What one case got: outcome class, the status if any, and a violation if one."""

    name: str
    family: str
    kind: str
    outcome: str
    status: int | None = None
    invalid: str | None = None
    violation: str | None = None
    uid: str = ""
    detail: str = ""
    seconds: float = 0.0


def status_class(status: int) -> str:
    """Outcome class of a DIMSE status."""
    if status == 0x0000:
        return "0x0000"
    if status == 0x0001 or status >> 12 == 0xB:
        return "warning"
    if status >> 8 in (0xA7, 0xA9, 0xC2):
        return f"0x{status >> 8:02X}xx"
    return "other-failure" if status & 0xF000 in (0xA000, 0xC000) else f"0x{status:04X}"


def reply_class(reply: Reply) -> str:
    """Outcome class of a PDU or event that came instead of an answer."""
    if reply.kind == "pdu":
        return {ASSOCIATE_AC: "accepted", ASSOCIATE_RJ: "reject", ABORT: "abort"}.get(
            reply.pdu_type, f"pdu-0x{reply.pdu_type:02x}")
    return {"eof": "closed", "reset": "closed", "timeout": "silent"}.get(reply.kind, reply.kind)


STALLS = ("rq-stall", "pdata-stall")


def wait_dropped(conn: Connection) -> tuple[str, str | None]:
    """Stay connected and silent; the router must close within network_timeout + 3 s."""
    deadline = time.monotonic() + CLOSE_GRACE
    outcome = ""
    try:
        while (reply := conn.read_pdu(max(0.0, deadline - time.monotonic()))).kind == "pdu":
            outcome = outcome or reply_class(reply)
        return outcome or reply_class(reply), "stall-not-dropped" if reply.kind == "timeout" \
            else None
    finally:
        conn.close()


def finish(conn: Connection) -> str | None:
    """Half-close and wait for the router to close; a violation when it does not."""
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + CLOSE_GRACE
    try:
        while (reply := conn.read_pdu(max(0.0, deadline - time.monotonic()))).kind == "pdu":
            pass
        return "held-open" if reply.kind == "timeout" else None
    finally:
        conn.close()


@functools.cache
def session_rq() -> bytes:
    """The A-ASSOCIATE-RQ of a client's own association: every context cases use."""
    return associate_rq(list(contexts()))


class Session:
    """One client thread's associations, reopened when a case kills one.

    Broken-PDU cases and dataset cases use separate associations, so that what a
    broken PDU leaves behind (a late answer, a half-read message) never lands on a
    dataset case.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.conns: dict[str, Connection] = {}
        self.message_id = 0

    def next_id(self) -> int:
        """A fresh message ID."""
        self.message_id = self.message_id % 65000 + 1
        return self.message_id

    def association(self, purpose: str) -> Connection:
        """The open association for `purpose`, or a new one (retried: the router may be busy)."""
        if purpose in self.conns:
            conn = self.conns[purpose]
            # The router drops an association idle for network_timeout: one left idle for
            # half of that (while this client ran other cases) is replaced, or the next
            # case would get the blame for that drop.
            if time.monotonic() - conn.last_used < NETWORK_TIMEOUT / 2:
                conn.last_used = time.monotonic()
                return conn
            self.release(purpose)
        last = ""
        for attempt in range(20):
            try:
                conn = Connection(self.port)
            except OSError as exc:
                last = str(exc)
            else:
                reply = conn.associate(session_rq(), timeout=10)
                if reply.kind == "pdu" and reply.pdu_type == ASSOCIATE_AC:
                    conn.last_used = time.monotonic()
                    self.conns[purpose] = conn
                    return conn
                last = reply_class(reply)
                conn.close()
            time.sleep(0.05 * attempt)
        raise RuntimeError(f"a valid A-ASSOCIATE-RQ was not accepted: {last}")

    def drop(self, purpose: str) -> str | None:
        """Give up an association; a violation if the router holds it open."""
        conn = self.conns.pop(purpose, None)
        return finish(conn) if conn is not None else None

    def release(self, *purposes: str) -> None:
        """End these associations (default: all) politely."""
        for purpose in purposes or list(self.conns):
            conn = self.conns.pop(purpose)
            conn.send(release_rq())
            conn.read_pdu(0.5)
            conn.close()


def run_rq(case: Case, session: Session) -> Result:
    """A fresh connection opened with a broken A-ASSOCIATE-RQ."""
    result = Result(case.name, case.family, case.kind, "closed")
    conn = Connection(session.port)
    if case.kind in STALLS:
        conn.send(RQ_MUTATIONS[case.kind](case.rng))
        result.outcome, result.violation = wait_dropped(conn)
        return result
    if conn.send(RQ_MUTATIONS[case.kind](case.rng)):
        reply = conn.read_pdu(ANSWER)
        result.outcome = reply_class(reply)
        if result.outcome == "accepted":
            conn.send(release_rq())
    result.violation = finish(conn)
    return result


def run_proxy(case: Case, session: Session) -> Result:
    """A fresh connection opened with a (mutated) PROXY header, then an A-ASSOCIATE-RQ."""
    result = Result(case.name, case.family, case.kind, "closed")
    untrusted = case.kind == "proxy-untrusted"
    conn = Connection(session.port, source="127.0.0.1" if untrusted else TRUSTED)
    data = PROXY_MUTATIONS[case.kind](case.rng)
    if case.kind in PROXY_STALLS:
        conn.send(data)
        result.outcome, result.violation = wait_dropped(conn)
        return result
    if conn.send(data):
        reply = conn.read_pdu(ANSWER)
        result.outcome = reply_class(reply)
        if result.outcome == "accepted":
            if untrusted:
                result.violation = "untrusted-proxy-accepted"
            conn.send(release_rq())
    result.violation = result.violation or finish(conn)
    return result


def run_in(case: Case, session: Session) -> Result:
    """One broken PDU on an established association, then a C-ECHO probe."""
    result = Result(case.name, case.family, case.kind, "closed")
    conn = session.association("pdu")
    data = IN_MUTATIONS[case.kind](case.rng, session.next_id())
    probe = session.next_id()
    conn.send(data)
    if case.kind in STALLS:
        session.conns.pop("pdu")
        result.outcome, result.violation = wait_dropped(conn)
        return result
    conn.send(pdu(0x04, pdv(1, 0x03, echo_rq(probe))))
    while True:
        answer = conn.read_command(ANSWER)
        if isinstance(answer, Dataset):
            if answer.get("MessageIDBeingRespondedTo") == probe:
                result.outcome, result.status = "survived", int(answer.get("Status", -1))
                return result
            result.detail += f" answered 0x{int(answer.get('Status', 0xFFFF)):04X}"
            continue
        result.outcome = reply_class(answer)
        result.violation = session.drop("pdu")
        return result


def purpose_of(case: Case) -> str:
    """Which of a client's associations a case runs on."""
    if case.family == "in":
        return "pdu"
    return "bomb" if case.kind == "deflate-bomb" else case.family


def run_dataset(case: Case, session: Session) -> Result:
    """A well-framed C-STORE whose dataset is the case's."""
    assert case.base is not None
    result = Result(case.name, case.family, case.kind, "closed", invalid=case.invalid,
                    uid=case.uid)
    # A bomb goes first on a fresh association: after another C-STORE on the same one,
    # the router aborts it before reading it (so its memory would never be measured).
    purpose = purpose_of(case)
    conn = session.association(purpose)
    context = next(c for c, a, s in contexts()
                   if (a, s) == (case.base.sop_class, case.transfer_syntax))
    message_id = session.next_id()
    command = store_rq(message_id, case.base.sop_class, case.uid)
    conn.send(p_data_message(context, command, case.data, conn.max_pdu))
    answer = conn.read_command(STORE_ANSWER)
    while isinstance(answer, Dataset) and answer.get("MessageIDBeingRespondedTo") != message_id:
        result.detail += f" stray answer to {answer.get('MessageIDBeingRespondedTo')}"
        answer = conn.read_command(STORE_ANSWER)
    if not isinstance(answer, Dataset):
        result.outcome = reply_class(answer)
        result.violation = session.drop(purpose) or (
            "store-unanswered" if result.outcome == "silent" else None)
        return result
    if purpose == "bomb":
        session.release(purpose)
    result.status = int(answer.get("Status", -1))
    result.outcome = status_class(result.status)
    if case.invalid and result.outcome in ("0x0000", "warning"):
        result.violation = "invalid-dataset-acknowledged"
    return result


RUNNERS: dict[str, Callable[[Case, Session], Result]] = {
    "rq": run_rq, "proxy": run_proxy, "in": run_in, "dataset": run_dataset,
}


def run_case(case: Case, session: Session) -> Result:
    """Run one case; a harness failure becomes the case's violation, not a crash."""
    start = time.monotonic()
    try:
        result = RUNNERS[case.family](case, session)
        result.seconds = time.monotonic() - start
        if conn := session.conns.get(purpose_of(case)):
            conn.last_used = time.monotonic()
        return result
    except Exception as exc:  # the campaign goes on; the case records what broke
        with contextlib.suppress(Exception):
            session.drop(purpose_of(case))
        return Result(case.name, case.family, case.kind, "harness-error",
                      violation="harness-error", detail=f"{type(exc).__name__}: {exc}")


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of the daemon and its children; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()
        self.tree, self.tree_at = [pid], 0.0

    def tree_kib(self, field: str) -> int:
        """`field` (VmRSS, VmHWM) in KiB, summed over the daemon's process tree."""
        if time.monotonic() - self.tree_at > 2.0:  # a /proc scan costs: not every sample
            self.tree = [self.pid, *(p for p, _ in _descendants(self.pid))]
            self.tree_at = time.monotonic()
        total = 0
        for pid in self.tree:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        return total

    def wait_for_forwarder(self, timeout: float = 30.0) -> None:
        """Until the daemon's tree has its forwarder process (named dr-forwarder)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, _ in _descendants(self.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "dr-forwarder":
                        self.tree_at = 0.0  # rescan the tree at the next sample
                        return
            time.sleep(0.05)
        raise AssertionError(f"no forwarder process under the daemon within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon's main process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.peak = max(self.peak, self.tree_kib("VmRSS"))


@dataclass
class Campaign:
    """A finished campaign: every case's result and the daemon-wide observations."""

    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_kib: int = 0
    hwm_kib: int = 0
    baseline_rss_kib: int = 0
    daemon_cpu_seconds: float = 0.0


def run_cases(daemon: RouterDaemon, names: list[str], workers: int,
              progress: Callable[[int], None] | None = None) -> Campaign:
    """Run the named cases with `workers` client threads; RSS sampled throughout."""
    assert daemon.proc is not None
    sampler = RssSampler(daemon.proc.pid)
    # With one receiving process (one CPU) the fork server and the forwarder start after
    # the daemon listens: idle means the whole tree, else their start counts as growth.
    sampler.wait_for_forwarder()
    campaign = Campaign(baseline_rss_kib=sampler.tree_kib("VmRSS"))
    # Dataset cases get their own clients: each client holds one association, and every
    # open association costs the router CPU (pynetdicom polls every 1 ms).
    queues: dict[str, queue.Queue[str]] = {"pdu": queue.Queue(), "dataset": queue.Queue()}
    for name in names:
        queues[name.split(":")[0]].put(name)
    dataset_workers = min(max(1, workers // 4), queues["dataset"].qsize())
    lock = threading.Lock()

    def work(todo: queue.Queue[str]) -> None:
        session = Session(daemon.port)
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                break
            result = run_case(make_case(name), session)
            with lock:
                campaign.results.append(result)
                if progress:
                    progress(len(campaign.results))
        with contextlib.suppress(Exception):
            session.release()

    start, cpu = time.monotonic(), sampler.cpu_seconds()
    sampler.start()
    threads = [
        threading.Thread(target=work, args=(queues["dataset" if n < dataset_workers else "pdu"],),
                         name=f"fuzz-{n}")
        for n in range(max(workers, dataset_workers + 1))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    campaign.seconds = time.monotonic() - start
    campaign.daemon_cpu_seconds = sampler.cpu_seconds() - cpu
    sampler.stopped.set()
    sampler.join()
    campaign.peak_rss_kib = max(sampler.peak, sampler.tree_kib("VmRSS"))
    campaign.hwm_kib = sampler.tree_kib("VmHWM")
    return campaign
