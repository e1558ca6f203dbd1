"""STOW-RS destinations (PS3.18 §10.5; configuration.md "DICOMweb STOW-RS services").

The real daemon forwards to a real Orthanc with Debian's DICOMweb plugin and basic auth
on (what arrived is checked through Orthanc's REST API), and to a small HTTP server
written here whose answers each test scripts (429, 5xx, FailureReasons, bearer tokens,
the bytes on the wire), as test_forward.py does with its scripted SCP.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from router.spool.database import Spool
from router.spool.queue import Instance
from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance, make_multiframe, make_series
from tests.peers import LOOPBACK, DicomWebOrthanc, _descendants, pyn_store, storescu
from tests.test_forward import DICOM_ROUTER, cli, deliveries, queue_list, wait_until

pytestmark = pytest.mark.interop

Router = Callable[..., RouterDaemon]
FAST_RETRY = "{initial_delay: 0.2s, max_delay: 1s}"


def rule_file(stow: str, *, extra_dest: str = "", default: str = "[forward: web]") -> str:
    """A rule file with one STOW-RS destination `web` (a YAML flow mapping); one receiving
    process, as in test_forward.rule_file."""
    return (
        "version: 1\n"
        "listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}\n"
        "spool: spool\n"
        "spool_min_free: 1MiB\n"
        "destinations:\n"
        f"  web: {stow}\n" + (f"  {extra_dest}\n" if extra_dest else "") + f"default: {default}\n"
    )


def orthanc_dest(orthanc: DicomWebOrthanc, **extra: str) -> str:
    """The Orthanc's DICOMweb root as a destination, password from web.pw."""
    fields = {
        "url": orthanc.stow_url,
        "auth": "{type: basic, username: router, password_file: web.pw}",
        "retry": FAST_RETRY,
        **extra,
    }
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def states(d: RouterDaemon) -> dict[str, str]:
    """SOP Instance UID -> delivery state."""
    return {r.uid: r.state for r in deliveries(d)}


def start_router(router: Router, tmp_path: Path, config: str, password: str) -> RouterDaemon:
    """The router fixture's first daemon, with `password` in its web.pw."""
    d_dir = tmp_path / "router0"
    d_dir.mkdir(parents=True, exist_ok=True)
    (d_dir / "web.pw").write_text(password + "\n")
    return router(config)


# --------------------------------------------------------------------------- Orthanc


def test_queued_instances_arrive_in_orthanc_through_stow_rs(
    router: Router, web_orthanc: DicomWebOrthanc, tmp_path: Path
) -> None:
    files = make_series(tmp_path / "in", 5)
    d = start_router(router, tmp_path, rule_file(orthanc_dest(web_orthanc)), "s3cret")
    assert storescu(d.port, files).ok
    web_orthanc.wait_count(5)
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert set(web_orthanc.instances()) == sent
    wait_until("all delivered", lambda: set(states(d).values()) == {"delivered"})
    uid = sorted(sent)[0]
    assert f"-> web: {uid} delivered after 1 attempt(s), last status 0x0000" in cli(
        d, "trace", str(d.config_path), uid
    )
    d.wait_log(f"delivery {uid} to web: delivered status=0x0000")


def test_a_wrong_password_holds_the_queue_and_a_fixed_password_file_releases_it(
    router: Router, web_orthanc: DicomWebOrthanc, tmp_path: Path
) -> None:
    files = make_series(tmp_path / "in", 2)
    d = start_router(router, tmp_path, rule_file(orthanc_dest(web_orthanc)), "wrong-pw")
    assert storescu(d.port, files).ok
    d.wait_log("HTTP 401 Unauthorized: the destination refused our credentials")
    rows, summary = queue_list(d)
    assert summary["web"] == (2, 0)
    assert all(r.tries == 0 and "401" in r.error for r in rows), rows
    assert "wrong-pw" not in d.log() and "wrong-pw" not in cli(d, "queue", str(d.config_path))
    assert web_orthanc.count() == 0
    (d.workdir / "web.pw").write_text("s3cret\n")  # read again because it changed
    web_orthanc.wait_count(2)
    wait_until("delivered", lambda: set(states(d).values()) == {"delivered"})
    assert "s3cret" not in d.log()


def test_a_stopped_orthanc_holds_the_queue_until_it_is_back(
    router: Router, web_orthanc: DicomWebOrthanc, tmp_path: Path
) -> None:
    web_orthanc.stop()
    files = make_series(tmp_path / "in", 3)
    d = start_router(router, tmp_path, rule_file(orthanc_dest(web_orthanc)), "s3cret")
    assert storescu(d.port, files).ok
    d.wait_log("destination web unreachable (cannot connect to")
    rows, summary = queue_list(d)
    assert summary["web"] == (3, 0) and all(r.tries == 0 for r in rows)
    web_orthanc.start()
    web_orthanc.wait_count(3)
    wait_until("delivered", lambda: set(states(d).values()) == {"delivered"})


def test_a_partly_refused_batch_delivers_the_stored_and_dead_letters_the_unreadable(
    router: Router, web_orthanc: DicomWebOrthanc, tmp_path: Path
) -> None:
    """Orthanc answers 400 and stores the readable part; the unreadable one is not listed.

    The router itself refuses a dataset cut short (its structural walk answers 0xC210), so
    the unreadable instance is put in the spool's queue directly, as a file a filesystem
    mishap damaged after it was acknowledged would be.
    """
    good = make_series(tmp_path / "in", 2)
    cut = tmp_path / "cut.dcm"
    make_instance(cut, pixel_bytes=8192, PatientID="CUT")
    cut.write_bytes(cut.read_bytes()[:-4000])
    web_orthanc.stop()  # so that the three queue up and go in one batch
    d = start_router(router, tmp_path, rule_file(orthanc_dest(web_orthanc)), "s3cret")
    assert pyn_store(d.port, good) == [0, 0]
    header = dcmread(cut, stop_before_pixels=True)
    Spool(d.workdir / "spool").enqueue(
        cut,
        ["web"],
        Instance(
            sop_instance_uid=str(header.SOPInstanceUID),
            sop_class_uid=str(header.SOPClassUID),
            transfer_syntax=str(header.file_meta.TransferSyntaxUID),
            study_uid=str(header.StudyInstanceUID),
            series_uid=str(header.SeriesInstanceUID),
            calling_ae="TEST",
        ),
    )
    d.wait_log("destination web unreachable")
    web_orthanc.start()
    wait_until("settled", lambda: "pending" not in states(d).values() and len(states(d)) == 3)
    cut_uid = str(dcmread(cut, stop_before_pixels=True).SOPInstanceUID)
    got = states(d)
    assert got.pop(cut_uid) == "dead" and set(got.values()) == {"delivered"}
    rows, summary = queue_list(d)
    assert summary["web"] == (0, 1)
    assert (
        rows[0].uid == cut_uid and "HTTP 400 Bad Request: left out of the answer" in rows[0].error
    )
    assert sorted(web_orthanc.instances()) == sorted(got)


# --------------------------------------------------------------------------- a scripted server


@dataclass
class Request:
    """One POST as the scripted server saw it."""

    path: str
    headers: dict[str, str]
    parts: list[bytes]
    at: float
    length: int


Answer = tuple[int, dict[str, str], Any]  # status, headers, JSON body (None: no body)


@dataclass
class StowServer:
    """An HTTP STOW-RS endpoint on 127.0.0.1 answering what `script` says, else 200.

    `script` entries are functions of the request's SOP Instance UIDs returning an
    Answer. With `keep_bodies` False, part bytes are counted and dropped (big files).
    """

    script: list[Callable[[list[str]], Answer]] = field(default_factory=list)
    keep_bodies: bool = True
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0  # open right now

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                owner.connections += 1

            def finish(self) -> None:
                owner.connections -= 1
                super().finish()

            def do_POST(self) -> None:
                owner.handle(self)

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.httpd.server_address[1]
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}/dicom-web"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers["Content-Length"])
        boundary = re.search(r"boundary=([^;\s]+)", h.headers["Content-Type"])
        assert boundary is not None
        if self.keep_bodies:
            body = h.rfile.read(length)
            pieces = body.split(b"--" + boundary.group(1).encode())
            assert pieces[0] == b"" and pieces[-1] == b"--\r\n", "bad multipart framing"
            parts = [piece.split(b"\r\n\r\n", 1)[1][:-2] for piece in pieces[1:-1]]
            uids = [str(dcmread(BytesIO(p), stop_before_pixels=True).SOPInstanceUID) for p in parts]
        else:
            left = length
            while left:
                left -= len(h.rfile.read(min(left, 1 << 20)))
            parts, uids = [], []  # answered by a 200 without lists: "all stored"
        self.requests.append(Request(h.path, dict(h.headers), parts, time.monotonic(), length))
        default = stored if self.keep_bodies else plain(200)
        status, headers, doc = (self.script.pop(0) if self.script else default)(uids)
        data = b"" if doc is None else json.dumps(doc).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/dicom+json", **headers}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _items(uids: list[str], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [{"00081155": {"vr": "UI", "Value": [u]}, **(extra or {})} for u in uids]


def stored(uids: list[str]) -> Answer:
    return 200, {}, {"00081199": {"vr": "SQ", "Value": _items(uids)}}


def failed(reason: int) -> Callable[[list[str]], Answer]:
    def answer(uids: list[str]) -> Answer:
        items = _items(uids, {"00081197": {"vr": "US", "Value": [reason]}})
        return 200, {}, {"00081198": {"vr": "SQ", "Value": items}}

    return answer


def plain(status: int, headers: dict[str, str] | None = None) -> Callable[[list[str]], Answer]:
    return lambda uids: (status, headers or {}, None)


@pytest.fixture
def stow_server() -> Iterator[StowServer]:
    server = StowServer()
    try:
        yield server
    finally:
        server.stop()


def scripted(server: StowServer, **extra: str) -> str:
    """The scripted server as a destination; `extra` values are YAML text."""
    fields = {"url": server.url, "retry": FAST_RETRY, **extra}
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def test_each_part_is_the_spooled_file_as_it_is_with_an_exact_content_length(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    files = make_series(tmp_path / "in", 5)
    config = rule_file(
        scripted(stow_server, batch="{max_instances: 2}", headers="{X-Tenant: radiology}"),
        extra_dest="local: {path: 'local/{SOPInstanceUID}.dcm'}",
        default="[store: local, forward: web]",
    )
    d = router(config)
    assert storescu(d.port, files).ok
    wait_until("5 delivered", lambda: list(states(d).values()).count("delivered") == 5)
    kept = {p.stem: p.read_bytes() for p in (d.workdir / "local").iterdir()}
    on_wire = [p for r in stow_server.requests for p in r.parts]
    assert sorted(on_wire) == sorted(kept.values())
    for r in stow_server.requests:
        assert r.path == "/dicom-web/studies"
        assert 1 <= len(r.parts) <= 2
        assert r.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
        assert "Transfer-Encoding" not in r.headers
        assert r.headers["X-Tenant"] == "radiology"
        assert r.headers["Accept"] == "application/dicom+json"


def test_a_failure_reason_goes_through_on_status(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    stow_server.script = [failed(0xA700), failed(0xA701)]
    config = rule_file(scripted(stow_server, on_status="{0xA701: dead_letter}"))
    d = router(config)
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("dead", lambda: list(states(d).values()) == ["dead"])
    row = deliveries(d)[0]
    assert (row.attempts, row.last_status) == (2, 0xA701)  # 0xA700 retried, 0xA701 as told
    assert "FailureReason 0xA701" in (row.last_error or "")
    assert len(stow_server.requests) == 2


def test_429_holds_the_destination_for_its_retry_after_without_counting_attempts(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    stow_server.script = [plain(429, {"Retry-After": "2"})]
    d = router(rule_file(scripted(stow_server)))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("delivered", lambda: list(states(d).values()) == ["delivered"], timeout=30)
    first, second = stow_server.requests
    assert second.at - first.at >= 2.0
    assert deliveries(d)[0].attempts == 1
    d.wait_log("destination web asks for a pause (HTTP 429 Too Many Requests): next try in 2.0 s")
    assert "unreachable" not in d.log()


def test_5xx_is_retried_and_counted(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    stow_server.script = [plain(503), plain(500)]
    d = router(rule_file(scripted(stow_server)))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("delivered", lambda: list(states(d).values()) == ["delivered"], timeout=30)
    assert deliveries(d)[0].attempts == 3
    d.wait_log("HTTP 503 Service Unavailable; attempt 1")


def test_a_bearer_token_file_is_read_again_when_it_changes(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    def only_new_token(uids: list[str]) -> Answer:
        auth = stow_server.requests[-1].headers.get("Authorization")
        return stored(uids) if auth == "Bearer token-2" else (401, {}, None)

    stow_server.script = [only_new_token] * 50
    d = router(rule_file(scripted(stow_server, auth="{type: bearer, token_file: web.token}")))
    (d.workdir / "web.token").write_text("token-1\n")
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    d.wait_log("HTTP 401 Unauthorized: the destination refused our credentials (bearer token")
    (d.workdir / "web.token").write_text("token-2\n")
    wait_until("delivered", lambda: list(states(d).values()) == ["delivered"], timeout=30)
    assert deliveries(d)[0].attempts == 1
    assert "token-1" not in d.log()


def test_batches_stop_at_max_bytes(router: Router, stow_server: StowServer, tmp_path: Path) -> None:
    files = make_series(tmp_path / "in", 4)  # ~513 KiB each
    stow_server.script = [plain(429, {"Retry-After": "1"})]  # meanwhile all four queue up
    d = router(rule_file(scripted(stow_server, batch="{max_bytes: 1.5MiB}")))
    assert storescu(d.port, files).ok
    wait_until("4 delivered", lambda: list(states(d).values()).count("delivered") == 4)
    batches = [r.parts for r in stow_server.requests[1:]]
    assert [len(b) for b in batches] == [2, 2]
    assert all(sum(map(len, b)) <= 1.5 * 1024**2 for b in batches)


def test_the_connection_is_kept_alive_and_closed_after_idle_timeout(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    d = router(rule_file(scripted(stow_server, idle_timeout="3s")))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("delivered", lambda: list(states(d).values()) == ["delivered"])
    assert stow_server.connections == 1
    wait_until("closed", lambda: stow_server.connections == 0, timeout=10)


def test_403_holds_the_queue_and_says_the_credentials_may_not_store(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    stow_server.script = [plain(403)] * 50
    d = router(rule_file(scripted(stow_server, auth="{type: bearer, token_file: web.token}")))
    (d.workdir / "web.token").write_text("read-only-token\n")
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    d.wait_log("HTTP 403 Forbidden: the credentials are not allowed to store (bearer token")
    rows, summary = queue_list(d)
    assert summary["web"] == (1, 0) and rows[0].tries == 0 and "HTTP 403" in rows[0].error


def test_415_sends_the_batch_to_the_dead_letters(
    router: Router, stow_server: StowServer, tmp_path: Path
) -> None:
    stow_server.script = [plain(415)]
    d = router(rule_file(scripted(stow_server)))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("dead", lambda: list(states(d).values()) == ["dead"])
    assert "HTTP 415 Unsupported Media Type: it takes no application/dicom" in (
        deliveries(d)[0].last_error or ""
    )


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in the folder)."""
    folder = tmp_path / "tls"
    folder.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


@pytest.fixture
def tls_server(certificate: Path) -> Iterator[StowServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    server = StowServer(tls=context)
    try:
        yield server
    finally:
        server.stop()


def test_an_unknown_server_certificate_holds_the_queue(
    router: Router, tls_server: StowServer, tmp_path: Path
) -> None:
    d = router(rule_file(scripted(tls_server)))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    d.wait_log("CERTIFICATE_VERIFY_FAILED")
    assert queue_list(d)[1]["web"] == (1, 0) and not tls_server.requests


def test_a_server_certificate_checked_against_ca_certificates_is_trusted(
    router: Router, tls_server: StowServer, certificate: Path, tmp_path: Path
) -> None:
    d = router(rule_file(scripted(tls_server, ca_certificates=str(certificate / "cert.pem"))))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    wait_until("delivered", lambda: list(states(d).values()) == ["delivered"])


def test_an_unreadable_ca_file_holds_the_queue_and_says_so(
    router: Router, tls_server: StowServer, tmp_path: Path
) -> None:
    d = router(rule_file(scripted(tls_server, ca_certificates="missing-ca.pem")))
    assert storescu(d.port, make_series(tmp_path / "in", 1)).ok
    d.wait_log("unreachable (cannot use ca_certificates")
    assert queue_list(d)[1]["web"] == (1, 0)


def _vm_hwm(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert m is not None
    return int(m.group(1)) * 1024


@pytest.mark.slow
def test_a_1_gib_instance_is_streamed_with_flat_memory(router: Router, tmp_path: Path) -> None:
    server = StowServer(keep_bodies=False)
    try:
        big = tmp_path / "big.dcm"
        make_multiframe(big, 1024**3)
        d = router(rule_file(scripted(server, timeout="300s")))
        forwarder = wait_until(
            "forwarder", lambda: [p for p, _ in _descendants(d.proc.pid)] if d.proc else None
        )
        assert pyn_store(d.port, [big], timeout=300) == [0]
        wait_until("delivered", lambda: list(states(d).values()) == ["delivered"], timeout=300)
        assert server.requests[0].length > 1024**3
        peak = max(_vm_hwm(pid) for pid in forwarder if Path(f"/proc/{pid}").exists())
        assert peak < 200 * 1024**2, f"forwarder peak RSS {peak / 1024**2:.0f} MiB"
    finally:
        server.stop()


# --------------------------------------------------------------------------- the rule file


def _check(
    tmp_path: Path, stow: str, default: str = "[forward: web]"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "r.yaml"
    path.write_text(rule_file(stow, default=default).replace("{port}", "11112"))
    return subprocess.run(
        [str(DICOM_ROUTER), "check", str(path)], capture_output=True, text=True, check=False
    )


def test_check_shows_the_stow_destination_and_its_auth_without_secrets(tmp_path: Path) -> None:
    done = _check(
        tmp_path,
        "{url: 'https://ai.example/dicom-web/', auth: {type: basic, username: gw,"
        " password_env: AI_PW}, headers: {X-Api-Key: hunter2}}",
    )
    assert done.returncode == 0, done.stderr
    assert (
        "  dest      web: STOW-RS https://ai.example/dicom-web/studies (basic auth as 'gw',"
        " password from $AI_PW; TLS verified; headers X-Api-Key;"
        " batches of 16 / 67108864 bytes)"
    ) in done.stdout
    assert "hunter2" not in done.stdout


def test_check_warns_of_a_secret_sent_over_plain_http(tmp_path: Path) -> None:
    done = _check(
        tmp_path,
        "{url: 'http://pacs.example.org/dicom-web', auth: {type: basic, username: u,"
        " password_env: PW}}",
    )
    assert done.returncode == 0, done.stderr
    assert "basic auth over plain http sends the secret unencrypted: use https" in done.stdout


def test_check_does_not_warn_of_plain_http_to_this_machine(tmp_path: Path) -> None:
    done = _check(
        tmp_path,
        "{url: 'http://127.0.0.1:8042/dicom-web', auth: {type: basic, username: u,"
        " password_env: PW}}",
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout


def test_sync_forwarding_to_a_stow_destination_is_refused_at_load(tmp_path: Path) -> None:
    done = _check(tmp_path, "{url: 'http://pacs/dicom-web'}", "[{forward: {to: web, mode: sync}}]")
    assert done.returncode == 1
    assert "'web' is a STOW-RS destination: forward to it with mode: queued" in done.stderr


def test_basic_auth_takes_one_password_source(tmp_path: Path) -> None:
    done = _check(
        tmp_path,
        "{url: 'http://pacs/dicom-web', auth: {type: basic, username: u,"
        " password_file: a, password_env: B}}",
    )
    assert done.returncode == 1
    assert "exactly one of password_file, password_env" in done.stderr


def test_headers_the_router_sets_cannot_be_overridden(tmp_path: Path) -> None:
    done = _check(tmp_path, "{url: 'http://pacs/dicom-web', headers: {Authorization: x}}")
    assert done.returncode == 1
    assert "the router sets the Authorization header itself" in done.stderr


def test_a_url_must_be_http_or_https(tmp_path: Path) -> None:
    done = _check(tmp_path, "{url: 'pacs:8042/dicom-web'}")
    assert done.returncode == 1
    assert "is not a DICOMweb root" in done.stderr
