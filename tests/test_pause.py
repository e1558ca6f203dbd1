"""Pausing a destination (status page, `queue pause|resume`) on the real daemon.

The daemon forwards to DCMTK's storescp; a paused destination must receive nothing while
its instances wait pending (no attempt counted), and get them once resumed.
"""

from __future__ import annotations

import getpass
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu
from tests.test_status_page import (
    basic,
    browser,  # noqa: F401 (the module's Chromium, a fixture)
    csrf_of,
    done_message,
    rule_file,
    shots,  # noqa: F401 (where screenshots go, a fixture)
    snap,
    users_file,
)

pytestmark = pytest.mark.interop

HELD = 3.0  # seconds a paused destination is watched to receive nothing
SEEN = "destination pacs paused by"  # the forwarder's line when it reads the pause


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The daemon (pages on loopback: the local admin) and its storescp."""
    tmp = tmp_path_factory.mktemp("pause")
    scp = StoreSCP(tmp / "scp").start()
    mport = free_port()
    daemon = RouterDaemon(tmp / "router", rule_file(scp.port, f"{{port: {mport}}}")).start()
    try:
        yield {"daemon": daemon, "scp": scp, "base": f"http://{LOOPBACK}:{mport}", "tmp": tmp}
    finally:
        daemon.stop()
        scp.stop()


def queue(daemon: RouterDaemon, *words: str) -> subprocess.CompletedProcess[str]:
    """`dicom-router queue RULE_FILE WORDS...` of this daemon."""
    return subprocess.run(
        [DICOM_ROUTER, "queue", daemon.config_path, *words],
        capture_output=True,
        text=True,
        cwd=daemon.workdir,
    )


def send_one(site: dict[str, Any], name: str) -> str:
    """storescu one CT to the daemon; its SOP Instance UID."""
    path = site["tmp"] / f"{name}.dcm"
    uid = str(make_ct(path, 4096))
    assert storescu(site["daemon"].port, [path]).ok
    return uid


def held(site: dict[str, Any], uid: str, before: int) -> None:
    """For HELD seconds storescp gets nothing; the instance stays pending with 0 tries."""
    deadline = time.monotonic() + HELD
    while time.monotonic() < deadline:
        assert site["scp"].count() == before, "a paused destination received an instance"
        time.sleep(0.2)
    listing = queue(site["daemon"], "list", "--destination", "pacs").stdout
    assert re.search(rf"{uid}\s+pacs\s+pending\s+0\s", listing), listing


def test_a_destination_paused_from_the_page_sends_only_once_resumed(
    site: dict[str, Any],
    browser: webdriver.Chrome,  # noqa: F811 (the imported fixture)
    shots: Path,  # noqa: F811 (the imported fixture)
) -> None:
    """Pause on the Destinations page: an instance sent meanwhile stays pending, the page
    says who paused it; Resume delivers it."""
    before, seen = site["scp"].count(), site["daemon"].log().count(SEEN)
    browser.get(f"{site['base']}/destinations")
    browser.find_element(By.XPATH, "//tr[@id='dest-pacs']//button[text()='Pause']").click()
    assert "pacs paused" in done_message(browser)
    site["daemon"].wait_log("/actions/pause by local: pacs paused")
    site["daemon"].wait_log(SEEN, count=seen + 1)  # the forwarder read it
    uid = send_one(site, "page")
    held(site, uid, before)
    browser.get(f"{site['base']}/destinations")
    state = browser.find_element(By.XPATH, "//tr[@id='dest-pacs']/td[2]").text
    assert state.startswith("paused (by local, since "), state
    snap(browser, shots, "destinations-paused")
    browser.find_element(By.XPATH, "//tr[@id='dest-pacs']//button[text()='Resume']").click()
    assert "pacs resumed (paused by local)" in done_message(browser)
    site["scp"].wait_count(before + 1, timeout=5)
    site["daemon"].wait_log("/actions/resume by local: pacs resumed")


def test_queue_pause_and_resume_on_the_command_line(site: dict[str, Any]) -> None:
    """`queue pause --destination pacs` holds what arrives; `queue list` shows the pause;
    `queue resume` delivers it."""
    before, seen = site["scp"].count(), site["daemon"].log().count(SEEN)
    done = queue(site["daemon"], "pause", "--destination", "pacs")
    assert done.returncode == 0 and "pacs paused by " in done.stdout, done.stderr
    site["daemon"].wait_log(SEEN, count=seen + 1)
    uid = send_one(site, "cli")
    held(site, uid, before)
    assert "paused by" in queue(site["daemon"], "list").stdout
    done = queue(site["daemon"], "resume", "--destination", "pacs")
    said = f"pacs resumed (paused by {getpass.getuser()}): 1 pending deliveries due now"
    assert done.returncode == 0 and said in done.stdout, done.stdout
    site["scp"].wait_count(before + 1, timeout=5)


def test_a_pause_survives_a_daemon_restart(site: dict[str, Any]) -> None:
    """Paused, the daemon restarted: it still sends nothing until `queue resume`."""
    before = site["scp"].count()
    assert queue(site["daemon"], "pause", "--destination", "pacs").returncode == 0
    site["daemon"].wait_log(SEEN, count=site["daemon"].log().count(SEEN) or 1)
    site["daemon"].stop()
    seen = site["daemon"].log().count(SEEN)
    site["daemon"].start()
    site["daemon"].wait_log(SEEN, count=seen + 1)  # the new forwarder read it
    uid = send_one(site, "restart")
    held(site, uid, before)
    assert queue(site["daemon"], "resume", "--destination", "pacs").returncode == 0
    site["scp"].wait_count(before + 1, timeout=5)


def test_pausing_an_unknown_destination_is_refused(site: dict[str, Any]) -> None:
    """`queue pause --destination pcas`: exit 2 with did-you-mean; the page answers 400."""
    done = queue(site["daemon"], "pause", "--destination", "pcas")
    assert done.returncode != 0 and "did you mean 'pacs'" in done.stderr, done.stderr
    form = {"csrf": csrf_of(site["base"], "local", ""), "destination": "pcas"}
    rsp = httpx.post(f"{site['base']}/actions/pause", data=form)
    assert rsp.status_code == 400 and "did you mean 'pacs'" in rsp.text


def test_a_read_only_user_cannot_pause(tmp_path: Path) -> None:
    """bob (role read) sees no Pause button, and his POST with a valid token is refused
    403: the destination is not paused."""
    mport = free_port()
    config = rule_file(free_port(), f"{{port: {mport}, users_file: {users_file(tmp_path)}}}")
    daemon = RouterDaemon(tmp_path / "router", config).start()
    try:
        base = f"http://{LOOPBACK}:{mport}"
        page = httpx.get(f"{base}/destinations", headers=basic("bob", "look")).text
        assert "dest-pacs" in page and ">Pause<" not in page
        rsp = httpx.post(
            f"{base}/actions/pause",
            headers=basic("bob", "look"),
            data={"csrf": csrf_of(base, "bob", "look"), "destination": "pacs"},
        )
        assert rsp.status_code == 403 and "role read" in rsp.text
        daemon.wait_log("/actions/pause refused for bob: role read")
        page = httpx.get(f"{base}/destinations", headers=basic("alice", "secret")).text
        assert ">Pause<" in page and "paused (by" not in page
        assert "paused" not in queue(daemon, "list").stdout
    finally:
        daemon.stop()
