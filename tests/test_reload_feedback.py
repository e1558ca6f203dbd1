"""Reload feedback of the real daemon: one log line and one count per SIGHUP or edit.

Every attempt says what came of it (reloaded, refused, unchanged, back to the version in
force), the watcher and the stat check seeing the same edit make one attempt, and the
key paths of a refused file count rules from 1 as `check` does.
"""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest

from router.rules.ruleset import config_version
from tests.daemon import RouterDaemon
from tests.peers import free_port
from tests.test_lifecycle import REJECT, STORE_A, Router, filled, refused_counts, rule_file, watched

pytestmark = pytest.mark.interop

OCTAL = "[{reject: 0124}]"  # YAML's octal 84: refused
# Edits per test: the watcher's debounce (0.3 s) and the main loop's stat check (each 1 s)
# race differently each time; a double count would show within a few.
EDITS = 5


def reload_metrics(port: int) -> dict[str, float]:
    """dicom_router_reloads_total by result, from the daemon's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        m["result"]: float(m["value"])
        for m in re.finditer(
            r'^\w*reloads_total\{result="(?P<result>\w+)"\} (?P<value>\S+)$', text, re.M
        )
    }


def stays(count: int, fragment: str, d: RouterDaemon, seconds: float = 2.5) -> bool:
    """True if `fragment` is logged exactly `count` times for `seconds` (watcher + stat tick)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if d.log().count(fragment) != count:
            return False
        time.sleep(0.1)
    return True


def test_sighup_with_unchanged_file_logs_unchanged(router: Router) -> None:
    """SIGHUP on an unchanged file: one line `unchanged, config version V`."""
    d = watched(router, rule_file())
    version = config_version(filled(d, rule_file()))
    d.signal(signal.SIGHUP)
    d.wait_log(f"unchanged, config version {version}")
    assert stays(1, "unchanged, config version", d)


def test_file_put_back_after_refused_reload_logs_back_to_version(router: Router) -> None:
    """After a refused edit, saving the running text again logs `is back to config version V`."""
    d = watched(router, rule_file())
    version = config_version(filled(d, rule_file()))
    d.write_config(rule_file(OCTAL))
    d.wait_log("reload refused")
    d.write_config(rule_file())
    d.wait_log(f"is back to config version {version}")
    assert "unchanged" not in d.log()


def test_each_edit_is_one_reload_attempt(router: Router) -> None:
    """Each saved edit, seen by the watcher and the stat check both, is reloaded once."""
    port = free_port()
    metrics = f"metrics: {{port: {port}}}\n"
    d = watched(router, rule_file(extra=metrics))
    for i in range(1, EDITS + 1):  # the stat tick falls at another point of each debounce
        d.write_config(rule_file(REJECT if i % 2 else STORE_A, extra=metrics))
        d.wait_log("reloaded", count=i)
    assert stays(EDITS, "reloaded", d)
    assert "unchanged" not in d.log()
    assert reload_metrics(port) == {"success": EDITS, "failure": 0.0}


def test_deleted_file_counts_one_failed_reload(router: Router) -> None:
    """Deleting the rule file is one refused reload, in the log and in /metrics."""
    port = free_port()
    text = rule_file(extra=f"metrics: {{port: {port}}}\n")
    d = watched(router, text)
    for i in range(1, EDITS + 1):
        d.config_path.unlink()
        d.wait_log("reload refused", count=i)
        d.write_config(text)
        d.wait_log("is back to config version", count=i)
    assert stays(EDITS, "reload refused", d)
    assert refused_counts(d.log()) == list(range(1, EDITS + 1))
    assert reload_metrics(port) == {"success": EDITS, "failure": EDITS}


def test_refused_reload_counts_rules_from_1(router: Router) -> None:
    """The key path of a refused reload numbers rules and actions from 1, as `check` does."""
    d = watched(router, rule_file())
    d.write_config(rule_file(extra="rules:\n  - {name: r, match: {}, actions: " + OCTAL + "}\n"))
    d.wait_log("reload refused")
    assert "rules.1.actions.1.reject: " in d.log()
    assert "rules.0." not in d.log()
