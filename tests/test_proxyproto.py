"""The PROXY protocol parser (router.net.proxyproto) and its socket reader, by themselves."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from router.net.netlayer.proxied import read_header, trusted
from router.net.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    expected,
    is_prefix,
    parse,
)


def v2(command: int, family: int, payload: bytes) -> bytes:
    """A v2 header: version 2, `command` (0 LOCAL, 1 PROXY), `family`, then `payload`."""
    head = bytes([0x20 | command, family]) + struct.pack(">H", len(payload))
    return V2_SIGNATURE + head + payload


def v2_tcp4(src: str, sport: int, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY TCP4 header from `src`:`sport` to 10.0.0.1:104, then `tlvs`."""
    ports = struct.pack(">HH", sport, 104)
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton("10.0.0.1") + ports + tlvs)


def v2_tcp6(src: str, sport: int) -> bytes:
    """A v2 PROXY TCP6 header from [`src`]:`sport`."""
    packed = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
    return v2(1, 0x21, packed + struct.pack(">HH", sport, 104))


# --------------------------------------------------------------------------- parsing

VALID = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.7 10.0.0.1 4000 104\r\n", ProxyHeader(1, ("192.0.2.7", 4000))),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::7 ::1 4000 104\r\n", ProxyHeader(1, ("2001:db8::7", 4000))),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None)),
    "v1-unknown-with-junk": (b"PROXY UNKNOWN ff 1 2 3\r\n", ProxyHeader(1, None)),
    "v2-tcp4": (v2_tcp4("192.0.2.7", 40000), ProxyHeader(2, ("192.0.2.7", 40000))),
    "v2-tcp6": (v2_tcp6("2001:db8::7", 40000), ProxyHeader(2, ("2001:db8::7", 40000))),
    "v2-local": (v2(0, 0x00, b""), ProxyHeader(2, None)),
    "v2-proxy-unspec": (v2(1, 0x00, b""), ProxyHeader(2, None)),
    "v2-tlvs-skipped": (
        v2_tcp4("192.0.2.7", 1, struct.pack(">BH", 0x04, 3) + b"abc"),
        ProxyHeader(2, ("192.0.2.7", 1)),
    ),
}


@pytest.mark.parametrize(("data", "header"), list(VALID.values()), ids=list(VALID))
def test_a_valid_header_parses_to_its_client_address(data: bytes, header: ProxyHeader) -> None:
    """Each accepted kind of header gives its source address (None: keep the balancer's)."""
    assert expected(data) == len(data)
    assert parse(data) == header


MALFORMED = {
    "not-proxy": b"\x01\x00\x00\x00\x00\x44",
    "v1-lowercase": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-bad-protocol": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-tcp4-with-ipv6": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "v1-bad-address": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "v1-port-too-big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1-missing-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1-double-space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-no-crlf-in-107": b"PROXY TCP4 " + b"1" * 200,
    "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + b"\0" * 12,
    "v2-version-1": V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12,
    "v2-command-2": V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12,
    "v2-udp": v2(1, 0x12, b"\0" * 12),
    "v2-unix": v2(1, 0x31, b"\0" * 216),
    "v2-tcp4-short": v2(1, 0x11, b"\0" * 11),
    "v2-tcp6-short": v2(1, 0x21, b"\0" * 35),
    "v2-too-long": V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", V2_MAX_PAYLOAD + 1),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_header_raises_proxy_error(data: bytes) -> None:
    """Malformed or over-long headers raise ProxyError (a protocol error), nothing else."""
    with pytest.raises(ProxyError):
        parse(data)


def test_a_v1_header_is_refused_once_107_bytes_hold_no_crlf() -> None:
    """v1's bound: 106 bytes without CRLF may still end; 107 may not."""
    assert expected(b"PROXY " + b"x" * (V1_MAX - 7)) == V1_MAX + 1
    with pytest.raises(ProxyError):
        expected(b"PROXY " + b"x" * (V1_MAX - 6))


def test_expected_never_asks_past_the_header() -> None:
    """Fed byte by byte, `expected` stays a lower bound until it names the exact length."""
    for data, _ in VALID.values():
        for n in range(len(data)):
            assert n < expected(data[:n]) <= len(data)


def test_is_prefix_tells_both_versions_from_a_dicom_pdu_header() -> None:
    """The 6 bytes read as a PDU header show a PROXY header of either version."""
    assert is_prefix(b"PROXY ")
    assert is_prefix(v2_tcp4("1.2.3.4", 1)[:6])
    assert not is_prefix(b"\x01\x00\x00\x00\x00\xcd")


def test_trusted_matches_networks_and_ipv4_mapped_addresses() -> None:
    """An address is trusted when inside a listed network, as IPv4 or IPv4-mapped IPv6."""
    networks = (ipaddress.ip_network("10.0.0.0/30"),)
    assert trusted("10.0.0.2", networks)
    assert trusted("::ffff:10.0.0.3", networks)
    assert not trusted("10.0.0.4", networks)


# --------------------------------------------------------------------------- the reader


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair over 127.0.0.1: (the router's end, the balancer's end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with accepted, client:
        yield accepted, client


def test_the_reader_consumes_the_header_and_not_a_byte_more(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Header and A-ASSOCIATE-RQ in one segment: the RQ's first byte is next on the socket."""
    router, balancer = pair
    balancer.sendall(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 104\r\n\x01\x00")
    assert read_header(router, time.monotonic() + 5, 5).source == ("192.0.2.7", 40000)
    assert router.recv(2) == b"\x01\x00"


def test_the_reader_assembles_a_header_sent_a_byte_at_a_time(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A v2 header trickled byte by byte (within the deadline) is read whole."""
    router, balancer = pair
    data = v2_tcp4("192.0.2.9", 7) + b"\x01"

    def trickle() -> None:
        for byte in data:
            balancer.send(bytes([byte]))
            time.sleep(0.002)

    thread = threading.Thread(target=trickle)
    thread.start()
    assert read_header(router, time.monotonic() + 5, 5).source == ("192.0.2.9", 7)
    thread.join()
    assert router.recv(1) == b"\x01"


def test_a_partial_header_then_silence_times_out_at_the_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Half a header, then nothing: TimeoutError at the deadline, not later."""
    router, balancer = pair
    balancer.sendall(b"PROXY TCP4 192.")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="not complete within 1 s"):
        read_header(router, start + 1.0, 1.0)
    assert time.monotonic() - start < 2.0


def test_a_header_cut_by_the_balancer_closing_is_a_proxy_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The balancer closes mid-header: ProxyError (closed inside the header)."""
    router, balancer = pair
    balancer.sendall(V2_SIGNATURE[:8])
    balancer.close()
    with pytest.raises(ProxyError, match="closed inside"):
        read_header(router, time.monotonic() + 5, 5)
