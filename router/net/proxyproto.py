"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a balancer sends first.

Pure: bytes in, a `ProxyHeader` or a `ProxyError` out; the socket side is
`router.net.netlayer.association`. The specification is haproxy's doc/proxy-protocol.txt.
Limits: a v1 header is at most `V1_MAX` bytes (the specification's own bound); a v2 header
16 bytes plus at most `V2_MAX_PAYLOAD` bytes of addresses and TLVs (TLVs are skipped).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from router.errors import ProtocolError

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
V2_MAX_PAYLOAD = 512  # addresses (at most 216 bytes, AF_UNIX) and TLVs
MAX_HEADER = V2_HEADER + V2_MAX_PAYLOAD  # the most any header may take

# v2 address family and protocol byte: AF_INET / AF_INET6 over STREAM, or UNSPEC.
_V2_TCP4, _V2_TCP6, _V2_UNSPEC = 0x11, 0x21, 0x00


class ProxyError(ProtocolError):
    """Bytes that are not (or not yet a prefix of) a PROXY protocol header we accept."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: `source` is the client's (address, port), None for LOCAL/UNKNOWN."""

    version: int
    source: tuple[str, int] | None


def is_prefix(data: bytes | bytearray) -> bool:
    """True if `data` (6 bytes or more) starts like a PROXY header of either version."""
    return bytes(data[:6]) == V1_PREFIX or bytes(data[:12]) == V2_SIGNATURE[: len(data[:12])]


def expected(data: bytes | bytearray) -> int:
    """The header's full length if `data` tells it, else a lower bound above `len(data)`.

    Raises ProxyError as soon as `data` cannot begin a header we accept (or exceeds a limit).
    """
    n = len(data)
    if n == 0:
        return 1
    if data[0] == V1_PREFIX[0]:
        return _expected_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _expected_v2(data)
    raise ProxyError(f"not a PROXY protocol header (first byte 0x{data[0]:02X})")


def _expected_v1(data: bytes | bytearray) -> int:
    n = len(data)
    if bytes(data[:6]) != V1_PREFIX[: min(n, 6)]:
        raise ProxyError("not a PROXY protocol header (v1 starts with 'PROXY ')")
    end = bytes(data[:V1_MAX]).find(b"\r\n")
    if end >= 0:
        return end + 2
    if n >= V1_MAX:
        raise ProxyError(f"PROXY v1 header without CRLF in its first {V1_MAX} bytes")
    return n + 1 if data[-1] == 0x0D else n + 2


def _expected_v2(data: bytes | bytearray) -> int:
    n = len(data)
    if bytes(data[:12]) != V2_SIGNATURE[: min(n, 12)]:
        raise ProxyError("not a PROXY protocol header (bad v2 signature)")
    if n < V2_HEADER:
        return V2_HEADER
    length = _be16(data, 14)
    if length > V2_MAX_PAYLOAD:
        raise ProxyError(f"PROXY v2 header announces {length} bytes, above {V2_MAX_PAYLOAD}")
    return V2_HEADER + length


def parse(data: bytes | bytearray) -> ProxyHeader:
    """The header that is exactly `data` (as long as `expected(data)` says)."""
    if expected(data) != len(data):
        raise ProxyError("incomplete PROXY protocol header")
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(bytes(data[6:-2]))
    return _parse_v2(bytes(data))


def _parse_v1(line: bytes) -> ProxyHeader:
    fields = line.split(b" ")
    if fields[0] == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, None)
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyError("PROXY v1 header is not 'TCP4|TCP6 src dst sport dport' or UNKNOWN")
    kind = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        source = kind(fields[1].decode("ascii"))
        kind(fields[2].decode("ascii"))
    except ValueError:
        raise ProxyError(f"PROXY v1 header: bad {fields[0].decode()} address") from None
    ports = [_port(field) for field in fields[3:]]
    return ProxyHeader(1, (str(source), ports[0]))


def _port(field: bytes) -> int:
    if not field.isdigit() or len(field) > 5 or (len(field) > 1 and field[:1] == b"0"):
        raise ProxyError("PROXY v1 header: bad port")
    port = int(field)
    if port > 65535:
        raise ProxyError("PROXY v1 header: bad port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader:
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyError(f"PROXY v2 header with version {version}")
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2, None)
    if command != 0x1:
        raise ProxyError(f"PROXY v2 header with command 0x{command:X}")
    family, payload = data[13], data[V2_HEADER:]
    if family == _V2_UNSPEC:
        return ProxyHeader(2, None)
    if family == _V2_TCP4 and len(payload) >= 12:
        return ProxyHeader(2, (str(ipaddress.IPv4Address(payload[:4])), _be16(payload, 8)))
    if family == _V2_TCP6 and len(payload) >= 36:
        return ProxyHeader(2, (str(ipaddress.IPv6Address(payload[:16])), _be16(payload, 32)))
    if family in (_V2_TCP4, _V2_TCP6):
        raise ProxyError(f"PROXY v2 header too short ({len(payload)} bytes) for its addresses")
    raise ProxyError(f"PROXY v2 header with unsupported family/protocol 0x{family:02X}")


def _be16(data: bytes | bytearray, offset: int) -> int:
    return int(struct.unpack_from(">H", data, offset)[0])
