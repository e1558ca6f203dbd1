"""PROXY protocol header mutations (issue 19): what a balancer, or someone posing as one, sends.

The campaign daemon trusts `TRUSTED` (127.0.0.2) as its balancer: `proxy-*` cases connect
from there with a (mutated) PROXY header, then a valid A-ASSOCIATE-RQ; `proxy-untrusted`
sends a valid header from 127.0.0.1, which must be refused. The other cases come from
127.0.0.1 and are served as without a balancer.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable

from tests.fuzz.pdus import valid_rq

TRUSTED = "127.0.0.2"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _v1(rng: random.Random) -> bytes:
    ip = ".".join(str(rng.randrange(256)) for _ in range(4))
    return f"PROXY TCP4 {ip} 127.0.0.1 {rng.randrange(1, 65536)} 104\r\n".encode()


def _v2(rng: random.Random, tlvs: bytes = b"") -> bytes:
    body = rng.randbytes(4) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", 1, 104) + tlvs
    return V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", len(body)) + body


def _header(rng: random.Random) -> bytes:
    return _v1(rng) if rng.random() < 0.5 else _v2(rng)


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


ProxyMutation = Callable[[random.Random], bytes]

# Each returns the bytes sent: a header (mutated), then a valid A-ASSOCIATE-RQ.
PROXY_MUTATIONS: dict[str, ProxyMutation] = {
    "proxy-v1-valid": lambda rng: _v1(rng) + valid_rq(),
    "proxy-v2-valid": lambda rng: _v2(rng) + valid_rq(),
    "proxy-v2-tlvs": lambda rng: _v2(rng, bytes([0xEE, 0, 8]) + rng.randbytes(8)) + valid_rq(),
    "proxy-bit-flip": lambda rng: _flip(rng, _header(rng)) + valid_rq(),
    "proxy-v1-random-fields": lambda rng: b"PROXY " + rng.randbytes(rng.randrange(1, 120))
    + b"\r\n" + valid_rq(),
    "proxy-v1-no-crlf": lambda rng: b"PROXY TCP4 " + b"1" * rng.randrange(97, 300) + valid_rq(),
    "proxy-v2-too-long": lambda rng: V2_SIGNATURE + b"\x21\x11"
    + struct.pack(">H", rng.randrange(513, 65536)) + rng.randbytes(64),
    "proxy-v2-random-body": lambda rng: V2_SIGNATURE + rng.randbytes(4 + rng.randrange(40))
    + valid_rq(),
    "proxy-missing": lambda rng: valid_rq(),
    "proxy-stall": lambda rng: _header(rng)[: rng.randrange(1, 15)],
    "proxy-untrusted": lambda rng: _header(rng) + valid_rq(),
}
PROXY_STALLS = ("proxy-stall",)
