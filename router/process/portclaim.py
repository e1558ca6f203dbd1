"""One dicom-router per listening port: a claim that a second daemon cannot take.

The receiving workers bind with SO_REUSEPORT, so a second `dicom-router run` by the same
user on the same port would bind too and take a share of the senders. Before binding,
the main process therefore listens on an abstract Unix socket named for the port
(`@dicom-router/port/11112`). The name is exclusive, lives in the network namespace
exactly as the port does (systemd's PrivateTmp cannot hide it; PrivateNetwork gives
both a fresh namespace), and disappears with the process however it ends: a kill -9
leaves no stale lock. Sockets are not inherited, so the workers and the forwarder do not
hold it. A second daemon finds the name taken, connects, and reads the holder's PID from
the connection's peer credentials (SO_PEERCRED) to name it in its start-up error.

The claim is per port, whatever the listen address: two dicom-routers on one port of
one host are refused even on different addresses.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from pathlib import Path

from router.errors import StartupError


def _name(port: int) -> bytes:
    return f"\0dicom-router/port/{port}".encode()


def claim_port(host: str, port: int) -> socket.socket | None:
    """Claim `port` for this daemon (None for port 0, which the kernel makes unique).

    Raises StartupError naming the other dicom-router when one holds it. Keep the socket
    open as long as the daemon listens.
    """
    if port == 0:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_name(port))
        sock.listen(8)  # never accepted: a prober only needs the peer credentials
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise StartupError(f"cannot claim port {port}: {exc}") from exc
        raise StartupError(
            f"cannot listen on {host}:{port}: in use by another dicom-router ({_holder(port)})"
        ) from exc
    return sock


def _holder(port: int) -> str:
    """'pid N: its command line', as far as it can be learned."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(_name(port))
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "pid unknown"
    finally:
        probe.close()
    pid = struct.unpack("3i", creds)[0]
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return f"pid {pid}: {' '.join(a.decode(errors='replace') for a in argv)}"
    return f"pid {pid}"
