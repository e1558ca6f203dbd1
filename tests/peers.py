"""Real DICOM peers for interop tests and benchmarks: DCMTK, Orthanc and a pynetdicom SCU.

Everything listens on and connects to 127.0.0.1 only. Every process started here is
tracked and stopped by PID (SIGTERM, then SIGKILL after a timeout), its descendants
included, even when a test fails or the interpreter exits early.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.dicomgen import iter_files

__all__ = [
    "LOOPBACK",
    "AssociationAborted",
    "AssociationFailed",
    "AssociationRejected",
    "CommitmentModality",
    "DicomWebOrthanc",
    "FileOutcome",
    "Orthanc",
    "Proc",
    "ScriptedSCP",
    "StoreResult",
    "StoreSCP",
    "StorescuParser",
    "echoscu",
    "file_contexts",
    "free_port",
    "parse_storescu_output",
    "pyn_store",
    "storescu",
    "wait_port",
]

LOOPBACK = "127.0.0.1"
# DCMTK enables TCP_NODELAY by default; setting it makes the choice explicit in every run.
_DCMTK_ENV = {"TCP_NODELAY": "1"}
# PS3.8: presentation context IDs are odd numbers 1..255, so at most 128 per association.
MAX_CONTEXTS = 128


# --------------------------------------------------------------------------- ports


def _test_ports() -> range:
    """Ports for our servers: outside the kernel's ephemeral range, this xdist worker's share.

    A port the OS picks with bind(0) comes from the ephemeral range, where every outgoing
    connection (and every other pytest-xdist worker) picks its source port too: it can be
    taken between free_port() and the server's bind. Below (or above) that range, in a
    share of its own per worker, only our own servers use the port.
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    ours = range(10000, low) if low - 10000 >= 4000 else range(high + 1, 65536)
    if len(ours) < 4000:
        return range(0)  # no room: let the OS pick (bind to port 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), index + 1)
    share = len(ours) // count
    return range(ours.start + index * share, ours.start + (index + 1) * share)


def _port_cycle() -> Iterator[int]:
    """This process's ports in turn from a random start, so a port is not handed out twice
    soon (a test may name a port nothing listens on yet, and start a server there later)."""
    ports = _test_ports()
    start = random.randrange(len(ports)) if ports else 0
    while True:
        for i in range(len(ports)):
            yield ports[(start + i) % len(ports)]
        if not ports:
            yield 0


_PORTS = _port_cycle()


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now, reserved for this process's servers."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                # No SO_REUSEADDR: a port with a listener or a TIME_WAIT connection fails.
                s.bind((LOOPBACK, next(_PORTS)))
            except OSError:
                continue
            port: int = s.getsockname()[1]
            return port


def _listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP port `port` (any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                # cols[1] = "ADDR:PORT" in hex, cols[3] = state (0A = LISTEN), cols[9] = inode
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    return inodes


def _listens_on(pid: int, port: int) -> bool:
    """True if pid holds a socket listening on port (so not someone else's server)."""
    wanted = {f"socket:[{inode}]" for inode in _listener_inodes(port)}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
    return False


def wait_port(port: int, timeout: float = 10.0, *, proc: Proc | None = None) -> None:
    """Wait until 127.0.0.1:port accepts TCP connections; fail fast if proc has died.

    With proc, readiness means proc (or a descendant) holds a LISTEN socket on port: no
    probe connection (which would show up in the server's logs), and a stolen port
    (someone else listening there) is not mistaken for our server being ready.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.returncode} before listening on {port}:\n"
                    + proc.log_tail()
                )
            if _listens_on(proc.pid, port) or any(
                _listens_on(pid, port) for pid, _ in _descendants(proc.pid)
            ):
                return
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex((LOOPBACK, port)) == 0:
                    return
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc is not None else ""
            raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s\n{tail}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of pid (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces/parens: split after its closing paren.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of root, found via /proc ppid links."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we were scanning
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        starts[pid] = int(fields[19])
    found: list[tuple[int, int]] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append((child, starts[child]))
            stack.append(child)
    return found


def _signal_if_same(pid: int, start: int, sig: signal.Signals) -> bool:
    """Send sig to pid only if it is still the process we recorded (guards PID reuse)."""
    if _proc_start_time(pid) != start:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


def _wait_gone(procs: Iterable[tuple[int, int]], timeout: float) -> list[tuple[int, int]]:
    """Wait up to timeout for the recorded processes to exit; return the survivors."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [(p, s) for p, s in pending if _alive(p, s)]
        if pending:
            time.sleep(0.02)
    return [(p, s) for p, s in pending if _alive(p, s)]


def _alive(pid: int, start: int) -> bool:
    """True if pid is the recorded process and has not exited (zombies count as gone)."""
    if _proc_start_time(pid) != start:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# Running Proc objects (strong refs: a dropped Proc must still be stopped at exit).
_LIVE: set[Proc] = set()


@atexit.register
def _stop_all() -> None:
    """Last-resort cleanup of every process still running at interpreter exit."""
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


class Proc:
    """A child process whose stdout+stderr go to a log file; stopped by PID, with children."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        """Start argv now. env entries are added to (not replacing) os.environ."""
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            # Own session: a Ctrl-C aimed at pytest does not hit peers mid-test; we stop them.
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _LIVE.add(self)

    @property
    def returncode(self) -> int | None:
        """Exit status (negative = killed by that signal), None while running."""
        return self.popen.poll()

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the main process to exit and return its status."""
        return self.popen.wait(timeout)

    def _tree(self) -> list[tuple[int, int]]:
        """Descendants first, so we can still find them before the parent dies."""
        return _descendants(self.pid) if self.alive() else []

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process, SIGKILL it after timeout; then do the same to its descendants."""
        children = self._tree()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5.0)
        # Children that outlived the parent (e.g. storescp --fork workers) are orphans now.
        survivors = [(p, s) for p, s in children if _alive(p, s)]
        for pid, start in survivors:
            _signal_if_same(pid, start, signal.SIGTERM)
        stubborn = _wait_gone(survivors, min(timeout, 3.0))
        for pid, start in stubborn:
            _signal_if_same(pid, start, signal.SIGKILL)
        _wait_gone(stubborn, 5.0)
        self._close()
        return self.popen.returncode

    def kill9(self) -> int:
        """SIGKILL the process and its descendants at once (a crash / power-cut stand-in)."""
        children = self._tree()
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        for pid, start in children:
            _signal_if_same(pid, start, signal.SIGKILL)
        code = self.popen.wait(5.0)
        _wait_gone(children, 5.0)
        self._close()
        return code

    def _close(self) -> None:
        """Close our handle on the log file and forget the process."""
        if not self._log.closed:
            self._log.close()
        _LIVE.discard(self)

    def log_text(self) -> str:
        """Everything the process wrote so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.returncode}>"


# --------------------------------------------------------------------------- DCMTK storescp


class StoreSCP:
    """DCMTK ``storescp`` on a free loopback port that accepts any SOP class and syntax.

    Files land in ``out_dir`` as ``<modality>.<SOPInstanceUID>.dcm``; each completed
    C-STORE appends the file name to ``received.txt`` (written after the file is complete).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        ae_title: str = "STORESCP",
        port: int | None = None,
        extra: Sequence[str] = (),
        fork: bool = False,
        max_pdu: int | None = None,
    ) -> None:
        """Configure (not start). extra: more storescp flags, e.g. ``--sleep-during 5``."""
        self.workdir = Path(workdir)
        self.out_dir = self.workdir / "out"
        self.received_log = self.workdir / "received.txt"
        self.ae_title = ae_title
        self._auto_port = port is None  # a port we picked may be stolen: then pick again
        self.port = port or free_port()
        self.extra = list(extra)
        self.fork = fork
        self.max_pdu = max_pdu
        self.proc: Proc | None = None

    def argv(self) -> list[str]:
        """The storescp command line."""
        # Completion marker: storescp runs this after the file is written and answered.
        on_reception = f"echo '#f' >> {shlex.quote(str(self.received_log))}"
        argv = [
            "storescp",
            "-v",
            "--aetitle", self.ae_title,
            "--output-directory", str(self.out_dir),
            "+B",   # bit-preserving: stream to disk as received, no re-encoding, flat memory
            "-pm",  # promiscuous: accept unknown (private/new/typo'd) SOP classes too
            "+xa",  # accept every transfer syntax DCMTK knows, compressed ones included
            "-fe", ".dcm",
            "-dhl",  # no reverse DNS lookups
            "--exec-on-reception", on_reception,
        ]  # fmt: skip
        if self.max_pdu:
            argv += ["--max-pdu", str(self.max_pdu)]
        if self.fork:
            argv.append("--fork")
        return [*argv, *self.extra, str(self.port)]

    def start(self, timeout: float = 10.0) -> Self:
        """Start storescp and wait until it listens."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("storescp already running")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.proc = Proc(self.argv(), self.workdir / "storescp.log", env=_DCMTK_ENV)
            try:
                wait_port(self.port, timeout, proc=self.proc)
                self._auto_port = False  # a restart must come back on the same port
                return self
            except RuntimeError:
                # Exited early: most likely someone took our free port in the meantime.
                if not self._auto_port or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop storescp (and any --fork workers); received files stay."""
        if self.proc is not None:
            self.proc.stop()

    def received(self) -> list[str]:
        """File names of completed C-STOREs in arrival order (duplicates kept)."""
        try:
            return self.received_log.read_text().split()
        except FileNotFoundError:
            return []

    def count(self) -> int:
        """Number of completed C-STOREs."""
        return len(self.received())

    def files(self) -> list[Path]:
        """Completed files on disk, sorted by name."""
        done = set(self.received())
        return sorted(p for p in self.out_dir.glob("*.dcm") if p.name in done)

    def wait_count(self, n: int, timeout: float = 30.0) -> int:
        """Wait until at least n C-STOREs completed; return the count."""
        return _wait_for(self.count, n, timeout, f"storescp on {self.port}", self.proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for(
    counter: Callable[[], int], n: int, timeout: float, what: str, proc: Proc | None
) -> int:
    """Poll counter() until it reaches n; raise with the peer's log tail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = counter()
        if value >= n:
            return value
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc is not None else ""
            raise TimeoutError(f"{what}: {value} instances after {timeout}s, wanted {n}\n{tail}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- Orthanc

# No proxies: an http_proxy in the environment (CI boxes) must not see loopback calls.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Orthanc:
    """Orthanc with its own config and storage in workdir; DICOM and REST on loopback.

    Orthanc starts in ~0.1 s but a clean SIGTERM shutdown takes ~3.5 s (HTTP and DICOM
    servers poll at 1-2 s), so stop() waits only stop_timeout (default 0.5 s) before
    SIGKILL. That is harmless for throwaway storage (SQLite index is crash-safe); pass
    stop_timeout=10 to get a clean shutdown.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        aet: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        config: Mapping[str, Any] | None = None,
        stop_timeout: float = 0.5,
    ) -> None:
        """Configure (not start). config entries override the defaults in config_dict()."""
        self.workdir = Path(workdir)
        self.stop_timeout = stop_timeout
        self.aet = aet
        self._auto_ports = dicom_port is None and http_port is None
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.overrides = dict(config or {})
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def config_dict(self) -> dict[str, Any]:
        """The Orthanc configuration: isolated, permissive, fast, no plugins."""
        storage = str(self.workdir / "db")
        return {
            "Name": f"test-{self.aet}",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only; that is all we use
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,  # any calling AE may store, no DicomModalities
            "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "Plugins": [],  # our own file, so Debian's /usr/share/orthanc/plugins is not loaded
            "LuaScripts": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "SyncStorageArea": False,  # no fsync per instance: tests do not need durability here
            "StorageCompression": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 4,
            "StableAge": 1,
            **self.overrides,
        }

    def start(self, timeout: float = 30.0) -> Self:
        """Write the config, start Orthanc, wait until REST /system and DICOM port answer."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("Orthanc already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._auto_ports = False  # a restart must come back on the same ports
                return self
            except RuntimeError:
                # Exited early: most likely a port we picked was taken in the meantime.
                if not self._auto_ports or attempt == 2:
                    raise
                self.dicom_port, self.http_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        """One start attempt; RuntimeError if Orthanc exits before it is ready."""
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config_dict(), indent=2))
        self.proc = proc = Proc(
            ["/usr/sbin/Orthanc", str(config_path)],
            self.workdir / "orthanc.log",
            env=_DCMTK_ENV,  # Orthanc is DCMTK inside: Nagle off, or ~20 instances/s
            cwd=self.workdir,
            name="Orthanc",
        )
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{proc.log_tail()}")
            with contextlib.suppress(OSError):
                self.get_json("/system")
                break
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Orthanc REST not up after {timeout}s\n{proc.log_tail()}")
            time.sleep(0.05)
        wait_port(self.dicom_port, max(1.0, deadline - time.monotonic()), proc=proc)

    def stop(self) -> None:
        """SIGTERM Orthanc, SIGKILL after stop_timeout; its storage stays in workdir."""
        if self.proc is not None:
            self.proc.stop(timeout=self.stop_timeout)

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """One REST call on loopback; raises urllib.error.HTTPError on 4xx/5xx."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with _HTTP.open(req, timeout=30) as rsp:
            data: bytes = rsp.read()
            return data

    def get_json(self, path: str) -> Any:
        """GET path and decode the JSON answer."""
        return json.loads(self._request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        """POST a JSON (or plain string) body and decode the JSON answer."""
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return json.loads(self._request("POST", path, body))

    def instances(self) -> list[str]:
        """SOP Instance UIDs of every stored instance."""
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.get_json("/instances?expand")]

    def count(self) -> int:
        """Number of stored instances (cheap: from /statistics)."""
        return int(self.get_json("/statistics")["CountInstances"])

    def wait_count(self, n: int, timeout: float = 30.0) -> int:
        """Wait until at least n instances are stored; return the count."""
        return _wait_for(self.count, n, timeout, f"Orthanc {self.aet}", self.proc)

    def orthanc_id(self, sop_instance_uid: str) -> str:
        """Orthanc's internal instance ID for a SOP Instance UID (KeyError if absent)."""
        for hit in self.post_json("/tools/lookup", sop_instance_uid):
            if hit["Type"] == "Instance":
                return str(hit["ID"])
        raise KeyError(sop_instance_uid)

    def tags(self, sop_instance_uid: str) -> dict[str, Any]:
        """The instance's tags as {Keyword: value} (Orthanc's simplified-tags)."""
        result: dict[str, Any] = self.get_json(
            f"/instances/{self.orthanc_id(sop_instance_uid)}/simplified-tags"
        )
        return result

    def download(self, sop_instance_uid: str, dest: str | os.PathLike[str]) -> Path:
        """Stream the stored DICOM file to dest and return dest."""
        url = f"{self.url}/instances/{self.orthanc_id(sop_instance_uid)}/file"
        dest = Path(dest)
        with _HTTP.open(url, timeout=60) as rsp, dest.open("wb") as out:
            while chunk := rsp.read(1 << 20):
                out.write(chunk)
        return dest

    def clear(self) -> None:
        """Delete every stored patient (and so every instance)."""
        for pid in self.get_json("/patients"):
            self._request("DELETE", f"/patients/{urllib.parse.quote(pid)}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class DicomWebOrthanc(Orthanc):
    """Orthanc with Debian's DICOMweb plugin at /dicom-web and HTTP basic auth on.

    The REST helpers log in as `user`; `stow_url` is the DICOMweb root for a router.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        user: str = "router",
        password: str = "s3cret",
        **kw: Any,
    ) -> None:
        """Configure (not start); kw as for Orthanc."""
        super().__init__(workdir, **kw)
        self.user = user
        self.password = password

    @property
    def stow_url(self) -> str:
        """The DICOMweb root (a STOW-RS destination's `url`)."""
        return f"{self.url}/dicom-web"

    def config_dict(self) -> dict[str, Any]:
        """Orthanc's test config plus DICOMweb and one registered user."""
        return {
            **super().config_dict(),
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **self.overrides,
        }

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """One REST call as `user`."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Authorization": f"Basic {token}"}
        )
        with _HTTP.open(req, timeout=30) as rsp:
            data: bytes = rsp.read()
            return data


# --------------------------------------------------------------------------- DCMTK SCUs


@dataclass
class FileOutcome:
    """What storescu reported for one input file."""

    path: str
    status: int | None = None  # None: no C-STORE-RSP (no context, bad file, abort...)
    sop_instance_uid: str | None = None  # Affected SOP Instance UID of the response
    error_comment: str | None = None  # (0000,0902) from the response's status detail
    error: str | None = None  # storescu's error line when there was no response


@dataclass
class StoreResult:
    """Outcome of one storescu run: per-file statuses plus the raw log."""

    returncode: int
    output: str
    files: list[FileOutcome] = field(default_factory=list)
    rejected: str | None = None  # e.g. "Result: Rejected Permanent, Source: ...; Reason: ..."
    request_failed: str | None = None  # no association at all (e.g. connection refused)
    aborted: bool = False  # the peer aborted / dropped the association mid-way

    @property
    def statuses(self) -> list[int]:
        """C-STORE-RSP statuses in send order; files without a response are left out."""
        return [f.status for f in self.files if f.status is not None]

    @property
    def ok(self) -> bool:
        """True if storescu exited 0 and every file got 0x0000."""
        return self.returncode == 0 and bool(self.files) and all(f.status == 0 for f in self.files)


_SENDING = re.compile(r"I: Sending file: (.*)$")
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})")
_INSTANCE = re.compile(r"Affected SOP Instance UID\s*:\s*([0-9.]+)")
_COMMENT = re.compile(r"\(0000,0902\)\s+LO\s+\[(.*)\]")
_FILE_ERROR = re.compile(r"E: (No presentation context for.*|Store Failed.*|Bad DICOM file.*)$")
_ABORT = re.compile(r"Peer aborted Association|Connection reset by peer|Broken pipe", re.I)


class StorescuParser:
    """Reads ``storescu -d`` stderr (DCMTK 3.6.x) line by line into a StoreResult.

    Per file: the "DIMSE Status : 0xXXXX" of the INCOMING C-STORE-RSP dump, its Affected
    SOP Instance UID, an ErrorComment from the "Status Detail" dump, or the error lines.
    Line by line so that a test can act on the Nth response while storescu still sends.
    """

    def __init__(self, on_response: Callable[[FileOutcome], None] | None = None) -> None:
        """on_response: called with a file's outcome once its C-STORE-RSP dump ends."""
        self.result = StoreResult(returncode=-1, output="")
        self.on_response = on_response
        self._incoming = False  # inside an INCOMING DIMSE dump (the C-STORE-RSP)
        self._collecting = False  # appending "E:" continuation lines to the last file's error
        self._rejected: list[str] | None = None  # "F:" lines after "Association Rejected"
        self._after_rejected = 0  # lines still to look at for that detail

    def feed(self, line: str) -> None:
        """Take one line of storescu's log (without its newline)."""
        result, files = self.result, self.result.files
        if self._after_rejected:
            # "Result: ..., Source: ..." and "Reason: ..." follow as further F: lines.
            self._after_rejected -= 1
            if line.startswith("F: ") and self._rejected is not None:
                self._rejected.append(line[3:])
                result.rejected = "; ".join(self._rejected)
        if self._collecting and line.startswith("E: ") and files:
            files[-1].error = f"{files[-1].error}\n{line[3:]}"
            if _ABORT.search(line):
                result.aborted = True
            return
        self._collecting = False
        if m := _SENDING.search(line):
            files.append(FileOutcome(path=m.group(1)))
            self._incoming = False
        elif "INCOMING DIMSE MESSAGE" in line:
            self._incoming = True
        elif "END DIMSE MESSAGE" in line:
            if self._incoming and files and files[-1].status is not None and self.on_response:
                self.on_response(files[-1])
            self._incoming = False
        elif self._incoming and files and (m := _STATUS.search(line)):
            files[-1].status = int(m.group(1), 16)
        elif self._incoming and files and (m := _INSTANCE.search(line)):
            files[-1].sop_instance_uid = m.group(1)
        elif files and (m := _COMMENT.search(line)):
            files[-1].error_comment = m.group(1)
        elif files and (m := _FILE_ERROR.search(line)):
            files[-1].error = m.group(1)
            self._collecting = True
        elif "Association Rejected" in line:
            result.rejected = line
            self._rejected, self._after_rejected = [], 2
        elif "Association Request Failed" in line:
            result.request_failed = line.split(": ", 1)[-1]
        elif _ABORT.search(line):
            result.aborted = True


def parse_storescu_output(log: str) -> StoreResult:
    """Parse a whole ``storescu -d`` stderr into a StoreResult with returncode -1."""
    parser = StorescuParser()
    for line in log.splitlines():
        parser.feed(line)
    parser.result.output = log
    return parser.result


def file_contexts(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, list[str]]]:
    """(SOP class, [transfer syntaxes]) pairs to propose for these files.

    Per SOP class: one context with each file transfer syntax seen for it (the exact one,
    so nothing is converted) plus one with Explicit/Implicit VR LE as a fallback.
    """
    by_class: dict[str, list[str]] = {}
    for path in paths:
        meta = read_file_meta_info(path)
        syntaxes = by_class.setdefault(str(meta.MediaStorageSOPClassUID), [])
        ts = str(meta.TransferSyntaxUID)
        if ts not in syntaxes:
            syntaxes.append(ts)
    fallback = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    contexts: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in by_class.items():
        contexts.extend((sop_class, [ts]) for ts in syntaxes)
        contexts.append((sop_class, fallback))
    return contexts


def _storescu_profile(path: Path, contexts: list[tuple[str, list[str]]]) -> None:
    """Write a DCMTK association-negotiation config file with one profile, "FILES"."""
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} presentation contexts needed, {MAX_CONTEXTS} allowed per "
            "association: send fewer SOP classes per storescu call"
        )
    lines = ["[[TransferSyntaxes]]"]
    ts_keys: dict[tuple[str, ...], str] = {}
    for _, syntaxes in contexts:
        key = tuple(syntaxes)
        if key not in ts_keys:
            ts_keys[key] = f"TS{len(ts_keys) + 1}"
            lines.append(f"[{ts_keys[key]}]")
            lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(syntaxes, 1)]
    lines += ["", "[[PresentationContexts]]", "[FILES]"]
    lines += [
        f"PresentationContext{i} = {sop_class}\\{ts_keys[tuple(syntaxes)]}"
        for i, (sop_class, syntaxes) in enumerate(contexts, 1)
    ]
    lines += ["", "[[Profiles]]", "[FILES]", "PresentationContexts = FILES", ""]
    path.write_text("\n".join(lines))


def storescu(
    port: int,
    files: Iterable[str | os.PathLike[str]],
    *,
    calling: str = "STORESCU",
    called: str = "DICOM_ROUTER",
    extra: Sequence[str] = (),
    propose: Literal["files", "required", "default"] = "files",
    halt: bool = False,
    timeout: float = 300.0,
    on_response: Callable[[FileOutcome], None] | None = None,
) -> StoreResult:
    """Send files (or directories) with DCMTK storescu on one association.

    propose="files": contexts built from the files' own SOP classes and transfer syntaxes
    via a generated ``-xf`` profile, so *any* SOP class UID can be sent (storescu's ``-R``
    refuses classes DCMTK does not know). "required" = ``-R``; "default" = storescu's
    built-in 120-class list (a modality that proposes everything). halt=False adds
    ``--no-halt`` so every file is attempted and reported. on_response is called (in the
    calling thread) with each file's outcome as its C-STORE-RSP arrives, while storescu
    still sends: a test can act on the Nth acknowledgement, whatever the machine's speed.
    """
    paths = iter_files(files)
    argv = ["storescu", "-d", "-aet", calling, "-aec", called]
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        if propose == "files":
            profile = Path(tmp) / "profile.cfg"
            _storescu_profile(profile, file_contexts(paths))
            argv += ["-xf", str(profile), "FILES"]
        elif propose == "required":
            argv.append("-R")
        if not halt:
            argv.append("--no-halt")
        argv += [*extra, LOOPBACK, str(port), *map(str, paths)]
        if on_response is not None:
            return _stream_storescu(argv, timeout, on_response)
        done = _run_dcmtk(argv, timeout)
    # The log is on stderr; stdout only carries the "XMIT: ...." progress dots.
    result = parse_storescu_output(done.stderr)
    result.returncode = done.returncode
    result.output = done.stderr + done.stdout
    return result


def _stream_storescu(
    argv: Sequence[str], timeout: float, on_response: Callable[[FileOutcome], None]
) -> StoreResult:
    """Run storescu, parsing its stderr as it comes; killed by PID after timeout."""
    parser = StorescuParser(on_response)
    log: list[str] = []
    with tempfile.TemporaryFile() as out:  # stdout: only progress dots, read at the end
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
            env={**os.environ, **_DCMTK_ENV}, text=True, errors="replace",
        )  # fmt: skip
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, expire)  # a hung peer must not hang the test
        timer.start()
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # DCMTK's log is unbuffered: a line as soon as written
                log.append(line)
                parser.feed(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if expired.is_set():
            raise subprocess.TimeoutExpired(list(argv), timeout)
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    result = parser.result
    result.returncode = returncode
    result.output = "".join(log) + stdout
    return result


def echoscu(
    port: int,
    calling: str = "ECHOSCU",
    called: str = "DICOM_ROUTER",
    *,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO 127.0.0.1:port with DCMTK echoscu; returncode 0 means success."""
    return _run_dcmtk(
        ["echoscu", "-v", "-aet", calling, "-aec", called, LOOPBACK, str(port)], timeout
    )


DCMDUMP_BATCH = 100  # files per dcmdump process: one process per file costs seconds


def dcmdump_failures(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """Files DCMTK's dcmdump cannot read (by its meta's syntax), with its error lines.

    Files are dumped in batches; a batch that fails is dumped again file by file, so each
    failure is named with its own errors. Warnings (a non-conformant value) do not count.
    """
    files = [str(p) for p in paths]
    failures: dict[str, str] = {}
    for start in range(0, len(files), DCMDUMP_BATCH):
        batch = files[start : start + DCMDUMP_BATCH]
        if _dcmdump(batch) is None:
            continue
        for path in batch:
            if (errors := _dcmdump([path])) is not None:
                failures[path] = errors
    return failures


def _dcmdump(paths: Sequence[str]) -> str | None:
    """None when dcmdump reads every file in `paths`, else its error lines."""
    done = _run_dcmtk(["dcmdump", *paths], timeout=120)
    errors = "\n".join(line for line in done.stderr.splitlines() if line.startswith("E:"))
    return None if done.returncode == 0 and not errors else errors or f"exit {done.returncode}"


def _run_dcmtk(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK client with Nagle off; subprocess.run kills it by PID on timeout."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env={**os.environ, **_DCMTK_ENV},
        stdin=subprocess.DEVNULL,
        check=False,
    )


# --------------------------------------------------------------------------- pynetdicom SCU


class AssociationRejected(Exception):
    """The SCP answered A-ASSOCIATE-RJ; result/source/reason are the PS3.8 codes."""

    def __init__(self, result: int, source: int, reason: int, text: str) -> None:
        super().__init__(
            f"association rejected: {text} (result={result}, source={source}, reason={reason})"
        )
        self.result = result
        self.source = source
        self.reason = reason


class AssociationFailed(Exception):
    """No association: connection refused/timed out, or no presentation context accepted."""


class AssociationAborted(Exception):
    """The association ended (abort, timeout) before every file got a response."""

    def __init__(self, statuses: list[int], message: str) -> None:
        super().__init__(f"{message} after {len(statuses)} responses: {statuses}")
        self.statuses = statuses


def _nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: disable Nagle; pynetdicom leaves it on, costing ~40 ms per PDU turn."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pyn_rejected(port: int, files: Sequence[Path], **kwargs: Any) -> AssociationRejected:
    """The A-ASSOCIATE-RJ a pyn_store gets (the test fails if it is accepted).

    pynetdicom 3.0.4's requestor races a peer that rejects at once: when its DUL thread
    receives the A-ASSOCIATE-RJ and closes before the calling thread checks
    `_is_connected` (acse.py:451-457), it aborts as if the connection had failed (seen on
    a loaded CPU). Such a lost race is tried again, up to 10 times; a wrong answer is not.
    """
    for _ in range(10):
        try:
            pyn_store(port, files, **kwargs)
        except AssociationFailed:
            continue
        except AssociationRejected as exc:
            return exc
        raise AssertionError(f"association to port {port} accepted, not rejected")
    raise AssertionError("10 association requests lost pynetdicom's race")


def pyn_store(
    port: int,
    paths: Iterable[str | os.PathLike[str]],
    *,
    calling: str = "PYNSCU",
    called: str = "DICOM_ROUTER",
    contexts: Sequence[PresentationContext] | None = None,
    max_pdu: int = 262144,
    timeout: float = 60.0,
    source: str | None = None,
) -> list[int]:
    """Send files with pynetdicom on one association, streamed from disk; return statuses.

    `source`: the local address to connect from (e.g. 127.0.0.2; default: the kernel's).

    Default contexts: each file's (SOP class, exact transfer syntax), as chunked sending
    requires. Sets pynetdicom's process-global STORE_SEND_CHUNKED_DATASET and logging off.
    """
    files = iter_files(paths)
    # Global switches: stream files from disk in PDU-sized pieces; skip per-PDU logging.
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    if contexts is None:
        pairs = {
            (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
            for m in map(read_file_meta_info, files)
        }
        if len(pairs) > MAX_CONTEXTS:
            raise ValueError(f"{len(pairs)} (SOP class, TS) pairs > {MAX_CONTEXTS} contexts")
        contexts = [build_context(UID(c), [UID(ts)]) for c, ts in sorted(pairs)]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = 10
    ae.maximum_pdu_size = max_pdu
    assoc = ae.associate(
        LOOPBACK,
        port,
        contexts=list(contexts),
        ae_title=called,
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        bind_address=(source, 0) if source else None,
    )
    try:
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            if rsp is None:  # cannot happen once is_rejected is set; keeps mypy honest
                raise AssociationFailed("rejected without an A-ASSOCIATE-RJ primitive")
            raise AssociationRejected(
                int(rsp.result or 0),
                int(rsp.result_source or 0),
                int(rsp.diagnostic or 0),
                f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}",
            )
        if not assoc.is_established:
            raise AssociationFailed(
                f"no association with {LOOPBACK}:{port} as {calling}->{called} "
                "(connection refused, timed out, or no context accepted)"
            )
        _bound_send_queue(assoc, limit=16)
        checkpoint = _Checkpoint()
        assoc._reactor_checkpoint = checkpoint
        statuses: list[int] = []
        for path in files:
            if not assoc.is_established:
                raise AssociationAborted(statuses, "association no longer established")
            checkpoint.park(assoc)
            rsp_ds = assoc.send_c_store(path)
            if "Status" not in rsp_ds:
                raise AssociationAborted(statuses, f"no C-STORE-RSP for {path}")
            statuses.append(int(rsp_ds.Status))
        assoc.release()
        return statuses
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


class _Checkpoint:
    """pynetdicom's reactor checkpoint (an Event to its users) that knows when the reactor
    is parked on it.

    Stock pynetdicom 3.0 pauses its reactor for a C-STORE by clearing the checkpoint and
    waiting for `_is_paused`; that flag may still be true from a turn the reactor is just
    leaving, and the reactor then takes the C-STORE-RSP ("Received unexpected C-STORE
    service message") while send_c_store waits dimse_timeout for it. park() waits until
    the reactor really blocks here, so the send that follows gets its response.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._flag = True
        self._parked = False

    def set(self) -> None:
        """Let the reactor run."""
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Stop the reactor at its next turn."""
        with self._cond:
            self._flag = False

    def is_set(self) -> bool:
        """True while the reactor may run."""
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's side: block while cleared."""
        with self._cond:
            if not self._flag:
                self._parked = True
                try:
                    self._cond.wait_for(lambda: self._flag, timeout)
                finally:
                    self._parked = False
            return self._flag

    def park(self, assoc: Any) -> None:
        """Clear, and return once the reactor blocks here (or has ended)."""
        self.clear()
        while assoc.is_alive():
            with self._cond:
                if self._parked:
                    return
            time.sleep(0.0001)


def _bound_send_queue(assoc: Any, limit: int) -> None:
    """Stock pynetdicom queues a whole chunked C-STORE's PDUs in RAM: block the producer."""
    dul = assoc.dul
    original = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        while dul.to_provider_queue.qsize() >= limit and dul.is_alive():
            time.sleep(0.0005)
        original(primitive)

    dul.send_pdu = send_pdu


class ScriptedSCP:
    """A pynetdicom Storage SCP on 127.0.0.1 that answers what the test tells it to.

    Answers come from `script` (first in, first out) and then `status`. Every C-STORE is
    recorded with the status answered, the transfer syntax and the encoded dataset.
    Verification is always supported, as on a real PACS.
    """

    def __init__(
        self,
        *,
        ae_title: str = "TESTSCP",
        sop_classes: Iterable[str] | None = None,
        transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        script: Iterable[int] = (),
        status: int = 0x0000,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.script: deque[int] = deque(script)
        self.status = status
        self.calls: list[tuple[str, int]] = []  # (SOP Instance UID, status answered)
        self.received: dict[str, tuple[str, bytes]] = {}  # uid -> (transfer syntax, bytes)
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        classes = (
            [str(c.abstract_syntax) for c in StoragePresentationContexts]
            if sop_classes is None
            else list(sop_classes)
        )
        for sop_class in classes:
            self.ae.add_supported_context(sop_class, list(transfer_syntaxes))
        self.ae.add_supported_context(Verification)
        self.server: Any = None

    def start(self) -> ScriptedSCP:
        """Listen (in background threads)."""
        self.server = self.ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        """Stop listening and drop running associations."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def _on_store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[union-attr]
        raw = event.request.DataSet.getvalue()  # type: ignore[union-attr]
        with self._lock:
            answer = self.script.popleft() if self.script else self.status
            self.calls.append((uid, answer))
            self.received[uid] = (str(event.context.transfer_syntax), raw)
        return answer

    def answered(self, uid: str | None = None) -> list[int]:
        """Statuses answered, in order (for one SOP Instance UID if given)."""
        with self._lock:
            return [s for u, s in self.calls if uid is None or u == uid]

    def accepted(self, uid: str) -> int:
        """How many times `uid` was answered 0x0000."""
        return self.answered(uid).count(0x0000)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 recording each POST's headers and JSON body."""

    def __init__(self, answers: Sequence[int] = ()) -> None:
        """`answers`: the HTTP statuses of the first POSTs (then 204)."""
        posts: list[tuple[dict[str, str], Any]] = []
        self.posts = posts  # the POSTs answered 2xx
        self.tries = 0
        scripted = deque(answers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.tries += 1
                status = scripted.popleft() if scripted else 204
                if status < 300:
                    posts.append((dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_posts(self, n: int, timeout: float = 30.0, settle: float = 2.0) -> list[Any]:
        """Wait for `n` POSTs, then `settle` s more to see no other comes; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        assert len(self.posts) == n, self.posts
        return list(self.posts)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- commitment


class CommitmentModality:
    """A modality asking for Storage Commitment (pynetdicom): sends N-ACTIONs to the router
    and takes the N-EVENT-REPORTs on its own port (its `commitment_port`), SCP role accepted.

    Each report is kept as (event type, Event Information dataset) in `reports`.
    """

    def __init__(self, ae_title: str = "MODALITY", port: int | None = None) -> None:
        """Start listening on `port` (default: a free loopback port)."""
        from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

        self.ae_title = ae_title
        self.reports: list[tuple[int, Any]] = []
        self.same_association: list[tuple[int, Any]] = []  # reports on the request's own
        self.port = port or free_port()
        self._ae = AE(ae_title=ae_title)
        self._ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self._server = self._ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )

    def _on_report(self, event: Event) -> tuple[int, None]:
        self.reports.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    def _on_same_association(self, event: Event) -> tuple[int, None]:
        self.same_association.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    def request(
        self,
        router_port: int,
        transaction_uid: str,
        refs: Sequence[tuple[str, str]],
        *,
        keep_open: float = 0.0,
    ) -> Any:
        """Send one N-ACTION (Request Storage Commitment); its response status dataset.

        keep_open: wait up to that many seconds on the association for the report (kept in
        `same_association`) before releasing it. AssociationFailed when the router
        accepts no Storage Commitment context.
        """
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StorageCommitmentPushModel,
            StorageCommitmentPushModelInstance,
        )

        ds = Dataset()
        ds.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        if items:
            ds.ReferencedSOPSequence = items
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.add_requested_context(Verification)  # so a refused commitment still associates
        answered = threading.Event()  # our N-EVENT-REPORT response is on the wire

        def sent(event: Event) -> None:
            if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
                answered.set()

        assoc = ae.associate(
            LOOPBACK,
            router_port,
            ae_title="DICOM_ROUTER",
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, self._on_same_association),
                (evt.EVT_DIMSE_SENT, sent),
            ],
        )
        if not assoc.is_established:
            raise AssociationFailed("no association")
        try:
            if not any(
                c.abstract_syntax == StorageCommitmentPushModel for c in assoc.accepted_contexts
            ):
                raise AssociationFailed("storage commitment context rejected")
            status, _ = assoc.send_n_action(
                ds, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
            deadline = time.monotonic() + keep_open
            while not self.same_association and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.same_association:  # released before the response went out, the router
                answered.wait(10)  # would see no answer and report again on a new association
            return status
        finally:
            if assoc.is_established:
                assoc.release()

    def wait_report(self, timeout: float = 30.0) -> tuple[int, Any]:
        """Wait for the next report not yet taken; (event type, dataset)."""
        deadline = time.monotonic() + timeout
        while not self.reports:
            if time.monotonic() > deadline:
                raise TimeoutError("no N-EVENT-REPORT")
            time.sleep(0.05)
        return self.reports.pop(0)

    def close(self) -> None:
        """Stop listening (once; again is a no-op)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
