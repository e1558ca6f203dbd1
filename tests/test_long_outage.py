"""A destination down for a long time (operations.md "Forwarding", issue 15 finding 1).

The backoff of an unreachable destination doubles per consecutive failed cycle up to
`max_delay`. Before it was clamped, 2**attempt overflowed a float after 1,024 cycles: every
cycle then logged a traceback and the worker paused a second. With millisecond delays the
real daemon goes through thousands of cycles in seconds, so the whole outage is played here:
one instance, a port where nothing listens, then a real storescp on that port.

It takes about 3.5 minutes of wall time (little CPU): pynetdicom pauses 0.1 s after every
failed connect (`Association.abort`), so 2,000 cycles cannot be played faster.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance
from tests.peers import StoreSCP, free_port
from tests.test_forward import Router, dest, rule_file, send, states, wait_until

pytestmark = pytest.mark.interop

CYCLES = 2_000
MAX_DELAY = 0.002  # seconds: `max_delay: 2ms`
NEXT_TRY = re.compile(r"next try in ([0-9.e-]+) s$")


def records(d: RouterDaemon) -> list[dict[str, Any]]:
    """The daemon's log so far, one JSON object per line (`--log-format json`)."""
    out = []
    for line in d.log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def unreachable_cycles(d: RouterDaemon) -> list[dict[str, Any]]:
    """One record per unreachable cycle of the forwarder."""
    return [r for r in records(d) if r.get("event") == "unreachable"]


def wait_cycles(d: RouterDaemon, n: int, timeout: float) -> None:
    """Wait until the log holds `n` unreachable cycles (a cheap count, once a second)."""
    deadline = time.monotonic() + timeout
    while d.log().count('"event": "unreachable"') < n:
        assert "Traceback" not in d.log(), "a traceback during the outage"
        assert time.monotonic() < deadline, f"fewer than {n} unreachable cycles in {timeout} s"
        time.sleep(1.0)


def test_2000_unreachable_cycles_never_wait_past_max_delay_and_the_instance_is_then_delivered(
    router: Router, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there until the storescp below
    pacs = dest("STORESCP", port, retry="{initial_delay: 1ms, max_delay: 2ms}")
    d = router(rule_file({"pacs": pacs}, ["forward: pacs"]), args=("--log-format", "json"))
    one = tmp_path / "in" / "one.dcm"
    one.parent.mkdir()
    make_instance(one)
    assert send(d, [one]) == [0x0000]

    wait_cycles(d, CYCLES, timeout=900)
    cycles = unreachable_cycles(d)
    assert "Traceback" not in d.log()
    assert not [r for r in records(d) if "exception" in r or r["level"] == "error"]
    for r in cycles:
        assert 0 < r["delay"] <= MAX_DELAY, r
        shown = NEXT_TRY.search(r["message"])
        assert shown is not None and float(shown.group(1)) <= MAX_DELAY, r["message"]
    assert states(d, "pacs") == ["pending"]

    pacs_scp = StoreSCP(tmp_path / "pacs", port=port).start()
    try:
        pacs_scp.wait_count(1)
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"])
    finally:
        pacs_scp.stop()
    assert "Traceback" not in d.log()
