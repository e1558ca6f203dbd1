"""HAProxy as a real peer: a throwaway `haproxy -db` on a free port, stopped by PID.

`haproxy_cfg` renders the configuration; docs/deployment.md shows its output for the
recipe's addresses, and tests/test_haproxy.py checks the two are the same text.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.peers import Proc, wait_port


@dataclass(frozen=True)
class Backend:
    """One router behind the balancer: its DICOM address and its metrics port (/readyz)."""

    name: str
    host: str
    port: int
    metrics_port: int


def haproxy_cfg(bind: str, backends: list[Backend], send_proxy: str = "send-proxy-v2") -> str:
    """The recipe: mode tcp, balance source, PROXY header to each router, /readyz checks."""
    servers = "".join(
        f"    server {b.name} {b.host}:{b.port} {send_proxy} check port {b.metrics_port}\n"
        for b in backends
    )
    return f"""\
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend dicom
    bind {bind}
    default_backend routers

backend routers
    balance source
    option httpchk GET /readyz
    default-server inter 2s fall 2 rise 1
{servers}"""


class HAProxy:
    """One `haproxy -db -f CFG` listening on 127.0.0.1:`port`."""

    def __init__(self, workdir: Path, port: int, backends: list[Backend],
                 send_proxy: str = "send-proxy-v2") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(haproxy_cfg(f"127.0.0.1:{port}", backends, send_proxy))
        self.proc: Proc | None = None

    def start(self, timeout: float = 10.0) -> Self:
        """Check the configuration, start HAProxy in the foreground, wait until it listens."""
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.proc = Proc([binary, "-db", "-f", self.config_path], self.workdir / "haproxy.log")
        wait_port(self.port, timeout, proc=self.proc)
        return self

    def stop(self) -> None:
        """Stop it by PID (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            self.proc.stop(5.0)
