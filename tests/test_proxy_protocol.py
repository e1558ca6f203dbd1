"""The daemon behind a balancer speaking the PROXY protocol: raw sockets play the balancer.

127.0.0.1 is the trusted balancer; 127.0.0.2 is any other sender. The real balancer
(HAProxy) has its own tests in tests/test_haproxy.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.daemon import RouterDaemon
from tests.test_proxyproto import v2, v2_tcp4, v2_tcp6
from tests.test_scp import module_daemon
from tests.ul import RELEASE_RQ, associate_rq

pytestmark = pytest.mark.interop

NETWORK_TIMEOUT = 2.0
CONFIG = f"""\
version: 1
listen:
  ae_title: DICOM_ROUTER
  host: 127.0.0.1
  port: {{port}}
  network_timeout: {NETWORK_TIMEOUT}s
  proxy_protocol: {{trusted: [127.0.0.1/32]}}
spool_min_free: 1MiB
destinations:
  archive: {{path: "archive/{{SOPInstanceUID}}.dcm"}}
callers:
  - {{ae_title: MODALITY, hosts: [192.0.2.7/32, "2001:db8::7/128"]}}
  - {{ae_title: BALANCER, hosts: [127.0.0.1/32]}}
  - {{ae_title: DIRECT, hosts: [127.0.0.2/32]}}
default: [{{store: archive}}]
"""


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """One daemon trusting 127.0.0.1 as its balancer, network_timeout 2 s."""
    yield from module_daemon(tmp_path_factory, "proxied", CONFIG)


def answer(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Connect from `source`, send `data`; the router's first bytes ("" if it just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        try:
            got = sock.recv(1)
        except ConnectionResetError:
            return b""
        if got == b"\x02":  # release cleanly: read the A-ASSOCIATE-AC, A-RELEASE-RP, close
            sock.sendall(RELEASE_RQ)
            while sock.recv(4096):
                pass
        return got


def closed_after(port: int, data: bytes, timeout: float) -> float:
    """Send `data` from 127.0.0.1; seconds until the router closes the connection."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"the router kept the connection open for more than {timeout} s")
    return time.monotonic() - start


RQ = associate_rq(calling=b"MODALITY")
ADMITTED = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 104\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::7 ::1 40000 104\r\n",
    "v2-tcp4": v2_tcp4("192.0.2.7", 40000),
    "v2-tcp6": v2_tcp6("2001:db8::7", 40000),
    "v2-tcp4-with-tlvs": v2_tcp4("192.0.2.7", 1, bytes([0x04, 0, 3]) + b"abc"),
}


@pytest.mark.parametrize("header", list(ADMITTED.values()), ids=list(ADMITTED))
def test_callers_admits_the_client_address_the_header_carries(
    proxied: RouterDaemon, header: bytes
) -> None:
    """MODALITY may call only from 192.0.2.7 / 2001:db8::7: through the header it is admitted."""
    assert answer(proxied.port, header + RQ) == b"\x02"  # A-ASSOCIATE-AC


def test_callers_refuses_a_client_address_not_in_its_hosts(proxied: RouterDaemon) -> None:
    """The header says 192.0.2.8: A-ASSOCIATE-RJ, and the log names 192.0.2.8, not 127.0.0.1."""
    assert answer(proxied.port, v2_tcp4("192.0.2.8", 5) + RQ) == b"\x03"
    proxied.wait_log("association from MODALITY@192.0.2.8 rejected: calling AE not in callers")


@pytest.mark.parametrize(
    "header", [v2(0, 0x00, b""), b"PROXY UNKNOWN\r\n"], ids=["v2-local", "v1-unknown"]
)
def test_local_and_unknown_keep_the_balancers_address(
    proxied: RouterDaemon, header: bytes
) -> None:
    """LOCAL (a health check) and UNKNOWN: the caller is the balancer, 127.0.0.1."""
    assert answer(proxied.port, header + associate_rq(calling=b"BALANCER")) == b"\x02"
    assert answer(proxied.port, header + RQ) == b"\x03"


def test_a_trusted_address_without_a_header_is_closed_with_one_line(
    proxied: RouterDaemon,
) -> None:
    """An A-ASSOCIATE-RQ straight from the balancer's address: closed, one line, no traceback."""
    before = proxied.log().count("not a PROXY protocol header")
    assert answer(proxied.port, associate_rq(calling=b"BALANCER")) == b""
    proxied.wait_log("not a PROXY protocol header", count=before + 1)
    assert "listen.proxy_protocol.trusted) closed" in proxied.log()
    assert "Traceback" not in proxied.log()


def test_a_malformed_header_from_a_trusted_address_is_closed_with_one_line(
    proxied: RouterDaemon,
) -> None:
    """A v1 header with a bad address: closed, one line naming the problem, no traceback."""
    header = b"PROXY TCP4 192.0.2.300 127.0.0.1 1 104\r\n"
    assert answer(proxied.port, header + RQ) == b""
    proxied.wait_log("PROXY v1 header: bad TCP4 address")
    assert "Traceback" not in proxied.log()


def test_a_partial_header_then_silence_is_dropped_at_the_unassociated_deadline(
    proxied: RouterDaemon,
) -> None:
    """Half a header, then nothing: closed after network_timeout (2 s), as a silent connection."""
    elapsed = closed_after(proxied.port, b"PROXY TCP4 192.0", timeout=NETWORK_TIMEOUT + 5)
    assert NETWORK_TIMEOUT - 0.5 <= elapsed <= NETWORK_TIMEOUT + 3
    proxied.wait_log("PROXY header not complete within 2 s")


def test_a_proxy_header_from_an_untrusted_address_is_refused(proxied: RouterDaemon) -> None:
    """127.0.0.2 is no balancer: its PROXY header closes the connection, with one line."""
    assert answer(proxied.port, v2_tcp4("192.0.2.7", 1) + RQ, source="127.0.0.2") in (
        b"",
        b"\x07",  # an A-ABORT before the close
    )
    proxied.wait_log("PROXY protocol header refused")
    assert "Traceback" not in proxied.log()


def test_an_untrusted_address_is_served_as_without_proxy_protocol(proxied: RouterDaemon) -> None:
    """A sender from 127.0.0.2 associates directly, its own address checked by `callers`."""
    assert answer(proxied.port, associate_rq(calling=b"DIRECT"), source="127.0.0.2") == b"\x02"
