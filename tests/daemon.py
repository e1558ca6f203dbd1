"""The real daemon in a test: `dicom-router run -c FILE` as a subprocess on a free port.

Tests write a rule file from YAML text in which `{port}` is our listening port; the
fixture starts the console script, waits until it listens, and stops it by PID after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Self

from tests.peers import Proc, _descendants, free_port, wait_port

DICOM_ROUTER = Path(sys.executable).parent / "dicom-router"


class RouterDaemon:
    """One `dicom-router run` process with its rule file in `workdir`."""

    def __init__(self, workdir: Path, config: str, *, port: int | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 options: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = workdir / "router.yaml"
        self.write_config(config)
        self.args = args
        self.options = options  # before `run`: --debug, --log-format
        self.env = env or {}
        self.proc: Proc | None = None
        self._runs = 0

    def write_config(self, config: str) -> None:
        """Write the rule file (`{port}` filled in) by write-then-rename, like an editor."""
        text = textwrap.dedent(config).replace("{port}", str(self.port))
        tmp = self.config_path.with_name(".router.yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, timeout: float = 20.0) -> Self:
        """Start the daemon and wait until it listens."""
        self._runs += 1
        self.proc = Proc(
            [DICOM_ROUTER, *self.options, "run", "-c", self.config_path, *self.args],
            self.workdir / f"daemon-{self._runs}.log",
            env=self.env, cwd=self.workdir, name="dicom-router",
        )
        wait_port(self.port, timeout, proc=self.proc)
        return self

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the daemon's main process."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        return self.proc.stop(timeout) if self.proc else None

    def pids(self) -> list[int]:
        """The main process and every process under it (workers, forwarder, fork server)."""
        assert self.proc is not None
        return [self.proc.pid, *(pid for pid, _ in _descendants(self.proc.pid))]

    def peak_rss_mib(self) -> dict[int, float]:
        """Each of those processes' peak resident memory (VmHWM), in MiB."""
        peaks = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # it ended meanwhile
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) / 1024
        return peaks

    def cpu_seconds(self) -> float:
        """User + system CPU time of all those processes (their threads included)."""
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def forwarders(self) -> list[int]:
        """PIDs of the daemon's forwarder processes (named dr-forwarder)."""
        found = []
        for child, _ in _descendants(self.proc.pid) if self.proc else []:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "dr-forwarder":
                    found.append(child)
        return found

    def kill9(self) -> None:
        """SIGKILL the daemon and its forwarder, as a power cut would."""
        if self.proc:
            self.proc.kill9()

    def log(self) -> str:
        """Everything the daemon logged, over all its runs."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob("daemon-*.log")))

    def wait_log(self, fragment: str, timeout: float = 10.0, count: int = 1) -> None:
        """Wait until `fragment` appears `count` times in the log."""
        deadline = time.monotonic() + timeout
        while self.log().count(fragment) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fragment!r} not logged {count}x:\n{self.log()[-3000:]}")
            time.sleep(0.02)
