"""A throwaway PostgreSQL (Debian's postgresql package) on a free port of 127.0.0.1.

initdb into a temporary folder, then `postgres -D` in the foreground, run as the
`postgres` system user (the server refuses root) through setpriv, which execs: the PID we
hold is the postmaster's, and we stop it by that PID. `kill()` is an immediate shutdown
(SIGQUIT: no checkpoint, like a crash); `start()` again recovers the same data.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self

from tests.peers import Proc, free_port, wait_port

_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
USER = "postgres"


def available() -> bool:
    """True when Debian's postgresql package (and its system user) is installed."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return bool(_BINS) and shutil.which("setpriv") is not None


class PostgreSQL:
    """One throwaway cluster; `dsn` connects as its superuser, without a password."""

    def __init__(self) -> None:
        # Its own folder in /tmp, owned by `postgres`: pytest's tmp_path is root's, 0700.
        base = Path(tempfile.mkdtemp(prefix="dicom-router-pg-"))
        self.base = base
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.port = free_port()
        self.bin = Path(_BINS[-1])
        self.proc: Proc | None = None
        self._runs = 0
        self.sockets.mkdir()
        entry = pwd.getpwnam(USER)
        for path in (base, self.sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        base.chmod(0o700)
        self._as_postgres(
            [self.bin / "initdb", "-D", self.data, "-U", USER, "-A", "trust", "--no-sync",
             "-E", "UTF8", "--locale=C.UTF-8"]
        )

    @property
    def dsn(self) -> str:
        """A libpq connection string for the superuser."""
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"

    def _as_postgres(self, argv: list[Any]) -> None:
        done = subprocess.run(
            ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *map(str, argv)],
            check=False, capture_output=True, text=True, timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def start(self, timeout: float = 30.0) -> Self:
        """Start the server (again) and wait until it listens."""
        self._runs += 1
        log = self.base / f"postgres-{self._runs}.log"
        self.proc = Proc(
            ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups",
             self.bin / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.sockets,
             "-h", "127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
            log, name="postgres",
        )
        os.chown(log, pwd.getpwnam(USER).pw_uid, -1)
        wait_port(self.port, timeout, proc=self.proc)
        return self

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster), as abrupt as a crash."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGQUIT)
        self.proc.wait(30)
        self.proc.stop()

    def stop(self) -> None:
        """Fast shutdown, by PID (SIGTERM would be 'smart': it waits for every client)."""
        if self.proc is not None and self.proc.alive():
            os.kill(self.proc.pid, signal.SIGINT)
            self.proc.wait(30)
        if self.proc is not None:
            self.proc.stop()

    def remove(self) -> None:
        """Stop it and delete its folder."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows ([] when it returns none)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []
