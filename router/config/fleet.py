"""`fleet:`: the PostgreSQL database every node mirrors its decisions and queues to.

The mirror is for seeing (`trace --fleet`, `queue --fleet`), never in the C-STORE path:
see `router.observe.fleet`. The connection string holds a password, so it belongs in a
file (`postgresql_file`, e.g. a systemd credential) rather than in the rule file.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from pydantic import Field, model_validator

from router.config.base import Strict
from router.config.fields import Seconds


def _host_name() -> str:
    return socket.gethostname() or "localhost"


class Fleet(Strict):
    """Mirror this node's decision log and queues to a PostgreSQL database shared by the fleet."""

    postgresql_file: str | None = Field(
        None,
        description="a file holding a libpq connection string (password inside), readable by "
        "the service only; $VARIABLES expand, e.g. ${CREDENTIALS_DIRECTORY}/fleet.dsn; relative "
        "paths resolve against the rule file's folder",
    )
    postgresql: str | None = Field(
        None,
        description="the libpq connection string written inline; discouraged (the rule file "
        "is not a secret): prefer postgresql_file",
    )
    node: str = Field(
        default_factory=_host_name,
        min_length=1,
        max_length=64,
        description="this node's name in the fleet view; default: the host name",
    )
    interval: Seconds = Field(
        1.0, gt=0, le=60, description="a duration: how often the mirror looks for new rows"
    )
    batch: int = Field(
        500, ge=1, le=10000, description="rows read from the spool and sent in one transaction"
    )
    timeout: Seconds = Field(
        5.0,
        ge=2,
        le=60,
        description="a duration: the bound on connecting to PostgreSQL and on each statement",
    )
    stale_after: Seconds = Field(
        60.0,
        gt=0,
        description="a duration: the fleet view shows a node as stale when its last mirror "
        "is older than this",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Fleet:
        if (self.postgresql_file is None) == (self.postgresql is None):
            raise ValueError("give exactly one of postgresql_file and postgresql")
        return self


def dsn_path(fleet: Fleet, base_dir: Path) -> Path | None:
    """The file named by `postgresql_file`, variables expanded (None when inline)."""
    if fleet.postgresql_file is None:
        return None
    path = Path(os.path.expandvars(fleet.postgresql_file))
    return path if path.is_absolute() else base_dir / path


def read_dsn(fleet: Fleet, base_dir: Path) -> str:
    """The connection string; OSError when its file cannot be read."""
    path = dsn_path(fleet, base_dir)
    if path is None:
        return fleet.postgresql or ""
    return path.read_text(encoding="utf-8").strip()


def cautions(fleet: Fleet, base_dir: Path) -> list[tuple[str, str]]:
    """(key, message) for what `check` points out: a missing, unreadable or open DSN file."""
    path = dsn_path(fleet, base_dir)
    if path is None:
        return [
            (
                "postgresql",
                "an inline connection string puts its password in the rule "
                "file: prefer postgresql_file",
            )
        ]
    try:
        mode = path.stat().st_mode
        path.read_bytes()
    except OSError as exc:
        return [("postgresql_file", f"cannot read {path}: {exc.strerror or exc}")]
    if mode & stat.S_IROTH:
        return [("postgresql_file", f"{path} is readable by every user: chmod o-r (password)")]
    return []
