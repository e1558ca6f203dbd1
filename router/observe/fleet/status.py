"""The mirror's state as `/readyz` shows it: a small file in the spool, rewritten each round.

The mirror runs in the forwarder process and `/readyz` is answered by the daemon's; a
file (replaced atomically) is the simplest shared place and costs one read per probe.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "fleet-mirror.json"


@dataclass(frozen=True)
class MirrorStatus:
    """One round's outcome: rows not yet mirrored and their age; the error, if any."""

    node: str
    lag_rows: int
    lag_seconds: float
    error: str | None
    down_since: float | None  # epoch seconds of the first failed round of an outage


def write(root: Path, state: MirrorStatus) -> None:
    """Replace the status file (a reader sees the old one or the new one, never half)."""
    tmp = root / f".{FILE}.tmp"
    try:
        tmp.write_text(json.dumps(asdict(state)), encoding="utf-8")
        os.replace(tmp, root / FILE)
    except OSError:
        pass  # only /readyz's detail is missing; the metric says the same


def detail(root: Path) -> str:
    """One line for /readyz: how far behind the mirror is, and why if PostgreSQL fails."""
    try:
        state = MirrorStatus(**json.loads((root / FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return "fleet mirror: starting"
    line = f"fleet mirror ({state.node}): {state.lag_rows} rows, {state.lag_seconds:.1f} s behind"
    if state.error is not None and state.down_since is not None:
        line += f"; PostgreSQL failing for {time.time() - state.down_since:.0f} s: {state.error}"
    return line
