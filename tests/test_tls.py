"""The listener with `listen.tls`: TLS associations, and a silent TLS client blocks nobody."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct

CONFIG = """
version: 1
listen:
  ae_title: ROUTER
  port: {port}
  network_timeout: 3s
  tls: {certificate: cert.pem, private_key: key.pem, require_client_certificate: false}
spool: spool
spool_min_free: 1MiB
destinations:
  archive: {path: "archive/{SOPInstanceUID}.dcm"}
default: [{store: archive}]
"""


def _self_signed(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            folder / "key.pem",
            "-out",
            folder / "cert.pem",
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def tls_router(tmp_path: Path, router: Callable[..., RouterDaemon]) -> RouterDaemon:
    """A daemon listening with TLS (a self-signed certificate next to its rule file)."""
    _self_signed(tmp_path / "router0")
    return router(CONFIG)


def _client() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _store_over_tls(port: int, path: Path) -> int:
    ae = AE(ae_title="TLSSCU")
    assoc = ae.associate(
        "127.0.0.1",
        port,
        # The file's own syntax only: other tests may have switched on chunked sending,
        # which needs an exact-syntax context.
        contexts=[
            build_context(CTImageStorage, ExplicitVRLittleEndian),
            build_context(Verification),
        ],
        ae_title="ROUTER",
        tls_args=(_client(), None),
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_tls_association_stores(tls_router: RouterDaemon, tmp_path: Path) -> None:
    """A TLS client echoes and stores; the instance lands in the destination."""
    uid = make_ct(tmp_path / "ct.dcm")
    assert _store_over_tls(tls_router.port, tmp_path / "ct.dcm") == 0
    assert (tls_router.workdir / "archive" / f"{uid}.dcm").exists()


@pytest.mark.alone
def test_silent_tls_client_blocks_no_one(tls_router: RouterDaemon, tmp_path: Path) -> None:
    """A client that connects and never sends its ClientHello does not stall other clients."""
    make_ct(tmp_path / "ct.dcm")
    with socket.create_connection(("127.0.0.1", tls_router.port)) as silent:
        start = time.monotonic()
        assert _store_over_tls(tls_router.port, tmp_path / "ct.dcm") == 0
        assert time.monotonic() - start < 2.0
        silent.settimeout(10)
        assert silent.recv(1) == b""  # dropped: no handshake within network_timeout (3 s)
        assert time.monotonic() - start < 6.0


def test_plain_client_on_tls_listener_is_dropped(tls_router: RouterDaemon, tmp_path: Path) -> None:
    """A client speaking plain DICOM to the TLS port gets no association; the daemon serves on."""
    ae = AE(ae_title="PLAIN")
    ae.acse_timeout = 5
    assoc = ae.associate(
        "127.0.0.1", tls_router.port, contexts=[build_context(Verification)], ae_title="ROUTER"
    )
    assert not assoc.is_established
    tls_router.wait_log("connection from 127.0.0.1 dropped")
    make_ct(tmp_path / "ct.dcm")
    assert _store_over_tls(tls_router.port, tmp_path / "ct.dcm") == 0
