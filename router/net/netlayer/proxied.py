"""The PROXY protocol on an accepted socket (change 14): read the header, nothing more.

Only connections from `listen.proxy_protocol.trusted` are read here, and from them the
header is required. It is read before TLS and before the A-ASSOCIATE-RQ, with MSG_PEEK so
that not one byte past it is consumed, within one deadline from the accept.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Sequence

from router.net.proxyproto import MAX_HEADER, ProxyError, ProxyHeader, expected, parse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted(address: str, networks: Sequence[Network]) -> bool:
    """True if `address` (as accepted) is in one of `networks`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def read_header(sock: socket.socket, deadline: float, limit: float) -> ProxyHeader:
    """Read exactly one PROXY header from `sock` before `deadline` (monotonic).

    Raises ProxyError (malformed), TimeoutError (incomplete at the deadline, `limit` s
    after the accept) or OSError (closed, reset).
    """
    buf = bytearray()
    while expected(buf) != len(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"PROXY header not complete within {limit:.0f} s")
        sock.settimeout(left)
        try:
            # Each turn consumes all it peeked, so the next peek waits for new bytes.
            peeked = sock.recv(MAX_HEADER - len(buf), socket.MSG_PEEK)
        except TimeoutError:
            raise TimeoutError(f"PROXY header not complete within {limit:.0f} s") from None
        if not peeked:
            raise ProxyError(f"connection closed inside the PROXY header ({len(buf)} bytes)")
        total = expected(buf + peeked)
        take = min(total, len(buf) + len(peeked)) - len(buf)
        _recv_exactly(sock, buf, take)
    return parse(buf)


def _recv_exactly(sock: socket.socket, buf: bytearray, count: int) -> None:
    """Append `count` bytes that MSG_PEEK showed are already in the receive buffer."""
    while count > 0:
        chunk = sock.recv(count)
        if not chunk:
            raise ProxyError("connection closed inside the PROXY header")
        buf += chunk
        count -= len(chunk)
