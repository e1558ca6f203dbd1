"""The status pages (`metrics: pages`) of the real daemon, in headless Chromium and over HTTP.

One daemon and one browser for the module's browser tests (loopback, no users file: the
local admin); DCMTK's storescp is the destination, storescu the sender.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_ct, make_instance
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu
from tests.prom import get
from tests.test_forward import StrictStoreSCP

pytestmark = pytest.mark.interop

PRIVATE = "1.2.826.0.1.3680043.8.498.999.1"  # storescp without -pm refuses it
PAGES = ("/", "/destinations", "/dead-letters", "/decisions", "/trace", "/studies")
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
# the browser's window (CSS pixels) for a screenshot: a phone's and a laptop's
PHONE = (390, 760)
DESKTOP = (1100, 640)


def rule_file(scp_port: int, metrics: str) -> str:
    """Everything to `pacs`; what COLLECT sends is collected per study for `ai`."""
    retry = "{initial_delay: 0.2s, max_delay: 1s}"
    return f"""\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}, workers: 1}}
spool: spool
spool_min_free: 1MiB
studies: {{quiet: 1h}}
metrics: {metrics}
destinations:
  pacs: {{ae_title: STORESCP, host: {LOOPBACK}, port: {scp_port}, retry: {retry}}}
  ai: {{ae_title: STORESCP, host: {LOOPBACK}, port: {scp_port}, retry: {retry}}}
rules:
  - name: research
    match: {{calling_ae: COLLECT}}
    actions: [{{forward: {{to: ai, collect: study}}}}]
default:
  - forward: pacs
"""


def wait_until(what: str, check: Any, timeout: float = 20.0) -> None:
    """Poll `check` until true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The daemon (metrics port, pages on loopback) and its strict storescp."""
    tmp = tmp_path_factory.mktemp("status-page")
    scp = StrictStoreSCP(tmp / "strict-scp").start()
    mport = free_port()
    daemon = RouterDaemon(tmp / "router", rule_file(scp.port, f"{{port: {mport}}}")).start()
    try:
        yield {"daemon": daemon, "scp": scp, "metrics": mport, "tmp": tmp}
    finally:
        daemon.stop()
        scp.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/img with UPDATE_SCREENSHOTS=1 (to commit), else a tmp folder."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(exist_ok=True)
        return DOCS_IMG
    return tmp_path_factory.mktemp("screenshots")


def viewport(driver: webdriver.Chrome, size: tuple[int, int]) -> None:
    """Make the page's own viewport `size` (the window size counts the browser's frame)."""
    driver.set_window_size(*size)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])


def snap(
    driver: webdriver.Chrome, folder: Path, name: str, size: tuple[int, int] = DESKTOP
) -> None:
    """Save the page shown as folder/NAME-WIDTH.png, in a window of `size`."""
    viewport(driver, size)
    path = folder / f"{name}-{size[0]}.png"
    assert driver.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium, console messages kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shows(driver: webdriver.Chrome, url: str, text: str) -> bool:
    """Load `url`; True when the page contains `text`."""
    driver.get(url)
    return text in driver.page_source


def severe(driver: webdriver.Chrome) -> list[Any]:
    """The console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def done_message(driver: webdriver.Chrome) -> str:
    """The sentence the page shows after an action (a click's page load may lag the click)."""
    wait_until("the action's message", lambda: driver.find_elements(By.ID, "done"))
    return str(driver.find_element(By.ID, "done").text)


def test_each_page_loads_without_console_errors(
    site: dict[str, Any], browser: webdriver.Chrome, shots: Path
) -> None:
    """Every page renders with its menu, and the browser logs no error (screenshot each;
    the overview also at a phone's width)."""
    ct = site["tmp"] / "one.dcm"
    make_ct(ct, 4096)
    assert storescu(site["daemon"].port, [ct]).ok
    for page in PAGES:
        browser.get(f"http://{LOOPBACK}:{site['metrics']}{page}")
        assert browser.find_element(By.CSS_SELECTOR, "header a.here").text
        assert severe(browser) == [], page
        snap(browser, shots, page.strip("/") or "overview")
    browser.get(f"http://{LOOPBACK}:{site['metrics']}/")
    snap(browser, shots, "overview", PHONE)
    snap(browser, shots, "overview")  # back to the desktop window for the next tests


def test_every_page_fits_a_phone_without_scrolling_sideways(
    site: dict[str, Any], browser: webdriver.Chrome
) -> None:
    """At a phone's width the menu wraps and a wide table scrolls in its own box: no page
    is wider than the screen."""
    try:
        for page in PAGES:
            browser.get(f"http://{LOOPBACK}:{site['metrics']}{page}")
            viewport(browser, PHONE)
            widths = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], (page, widths)
    finally:
        browser.set_window_size(*DESKTOP)


def test_a_dead_letter_retried_from_the_page_is_delivered(
    site: dict[str, Any], browser: webdriver.Chrome, shots: Path
) -> None:
    """A private instance refused by strict storescp is a dead letter; after storescp -pm
    takes the port, Retry on the page delivers it."""
    path = site["tmp"] / "private.dcm"
    uid = str(make_instance(path, PRIVATE, pixel_bytes=1024))
    assert storescu(site["daemon"].port, [path]).ok
    base = f"http://{LOOPBACK}:{site['metrics']}"
    wait_until("the dead letter listed", lambda: shows(browser, f"{base}/dead-letters", uid))
    snap(browser, shots, "dead-letters")
    site["scp"].stop()
    relaxed = StoreSCP(site["tmp"] / "relaxed-scp", port=site["scp"].port).start()
    site["scp"] = relaxed
    row = browser.find_element(By.XPATH, f"//tr[td[text()='{uid}']]")
    row.find_element(By.XPATH, ".//button[text()='Retry']").click()
    assert "queued again" in done_message(browser)
    relaxed.wait_count(1, timeout=20)
    browser.get(f"{base}/trace?uid={uid}")
    wait_until(
        "delivered in the trace",
        lambda: shows(browser, f"{base}/trace?uid={uid}", '<td class="ok">delivered</td>'),
    )
    snap(browser, shots, "trace")
    assert severe(browser) == []


def test_force_complete_of_a_collecting_study_from_the_page(
    site: dict[str, Any], browser: webdriver.Chrome, shots: Path
) -> None:
    """A study collecting (quiet 1h) is completed by its button and sent to storescp."""
    path = site["tmp"] / "collect.dcm"
    make_ct(path, 4096)
    before = len(site["scp"].files())
    assert storescu(site["daemon"].port, [path], calling="COLLECT").ok
    base = f"http://{LOOPBACK}:{site['metrics']}"
    wait_until("the study listed", lambda: shows(browser, f"{base}/studies", "Complete now"))
    snap(browser, shots, "studies")
    study = "//tr[td[1][text()='study']]//button[text()='Complete now']"
    browser.find_element(By.XPATH, study).click()
    assert "complete (forced)" in done_message(browser)
    site["scp"].wait_count(before + 1, timeout=20)
    browser.get(f"{base}/studies")
    assert browser.find_elements(By.ID, "none")


def test_a_post_without_the_csrf_token_is_refused(site: dict[str, Any]) -> None:
    """POST /actions/purge without the form's token: 403, nothing purged, one log line."""
    rsp = httpx.post(
        f"http://{LOOPBACK}:{site['metrics']}/actions/purge", data={"destination": "pacs"}
    )
    assert rsp.status_code == 403 and "CSRF" in rsp.text
    site["daemon"].wait_log("/actions/purge refused for local: missing or wrong CSRF token")


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("abc", "'abc' is not a dead letter's number"),
        ("9" * 30, "is not a dead letter's number"),
        ("987654", "no dead letter 987654"),
    ],
)
def test_a_retry_of_a_bad_or_unknown_id_answers_400(
    site: dict[str, Any], given: str, says: str
) -> None:
    """Retry with a non-numeric, too long or unknown dead letter id: 400 saying why, one
    log line, and the pages serve on."""
    base = f"http://{LOOPBACK}:{site['metrics']}"
    form = {"csrf": csrf_of(base, "local", ""), "destination": "pacs", "id": given}
    rsp = httpx.post(f"{base}/actions/retry", data=form)
    assert rsp.status_code == 400 and says in rsp.text
    site["daemon"].wait_log(f"/actions/retry refused for local: {rsp.text.strip()}")
    assert httpx.get(f"{base}/dead-letters").status_code == 200


def test_metrics_stays_fast_while_every_page_slot_is_held(site: dict[str, Any]) -> None:
    """Clients trickling page forms hold both page slots: pages answer 503 at once,
    /metrics answers 200 within a second."""
    slow = []
    for _ in range(2):
        s = socket.create_connection((LOOPBACK, site["metrics"]))
        s.sendall(b"POST /actions/purge HTTP/1.0\r\nContent-Length: 100\r\n\r\nx")
        slow.append(s)
    try:
        wait_until("page slots taken", lambda: get(site["metrics"], "/")[0] == 503, 5)
        started = time.monotonic()
        code, _ = get(site["metrics"], "/metrics")
        assert code == 200 and time.monotonic() - started < 1.0
    finally:
        for s in slow:
            s.close()
    wait_until("pages back", lambda: get(site["metrics"], "/")[0] == 200, 15)


def test_pages_asked_for_off_loopback_without_users_file_are_refused_by_check(
    tmp_path: Path,
) -> None:
    """metrics host 0.0.0.0, `pages: true` and no users_file: check fails, saying why."""
    done = check(tmp_path, "{host: 0.0.0.0, port: 9110, pages: true}")
    assert done.returncode == 1
    assert "need users_file" in done.stdout + done.stderr


def test_an_older_rule_file_off_loopback_keeps_working_with_the_pages_off(
    tmp_path: Path,
) -> None:
    """metrics host 0.0.0.0 without `pages` (a rule file of the previous release): valid,
    the pages off, and check says so."""
    done = check(tmp_path, "{host: 0.0.0.0, port: 9110}")
    assert done.returncode == 0, done.stderr
    assert "so the status pages are off" in done.stdout


def check(folder: Path, metrics: str) -> subprocess.CompletedProcess[str]:
    """`dicom-router check` of a rule file with this `metrics:` mapping."""
    rules = folder / "router.yaml"
    rules.write_text(rule_file(104, metrics).replace("{port}", "11112"))
    return subprocess.run([DICOM_ROUTER, "check", rules], capture_output=True, text=True)


def users_file(folder: Path) -> Path:
    """An admin (password 'secret') and a read-only user (password 'look')."""
    path = folder / "users"
    rows = [
        f"alice:admin:{bcrypt.hashpw(b'secret', bcrypt.gensalt(4)).decode()}",
        f"bob:read:{bcrypt.hashpw(b'look', bcrypt.gensalt(4)).decode()}",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def basic(name: str, password: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_a_read_only_user_may_look_but_not_post_actions(tmp_path: Path) -> None:
    """users_file: no login 401; bob (read) sees the page, his POST with a valid token 403."""
    mport = free_port()
    users = users_file(tmp_path)
    config = rule_file(free_port(), f"{{port: {mport}, users_file: {users}}}")
    daemon = RouterDaemon(tmp_path / "router", config).start()
    try:
        base = f"http://{LOOPBACK}:{mport}"
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/", headers=basic("bob", "wrong")).status_code == 401
        page = httpx.get(f"{base}/dead-letters", headers=basic("bob", "look"))
        assert page.status_code == 200 and "bob (read)" in page.text
        assert httpx.get(f"{base}/", headers=basic("alice", "secret")).status_code == 200
        rsp = httpx.post(
            f"{base}/actions/purge",
            headers=basic("bob", "look"),
            data={"csrf": csrf_of(base, "bob", "look")},
        )
        assert rsp.status_code == 403 and "role read" in rsp.text
        daemon.wait_log("/actions/purge refused for bob: role read")
    finally:
        daemon.stop()


def csrf_of(base: str, name: str, password: str) -> str:
    """The CSRF token the pages hand `name` (their csrf-token meta element)."""
    text = httpx.get(f"{base}/", headers=basic(name, password)).text
    marker = 'name="csrf-token" content="'
    return text.split(marker, 1)[1].split('"', 1)[0]


def token_file(folder: Path) -> Path:
    """A script's admin token 'admin-token' and a read-only one 'read-token', as sha256."""
    path = folder / "tokens"
    rows = [
        "# name:role:sha256-hex-of-token",
        f"nightly:admin:{hashlib.sha256(b'admin-token').hexdigest()}",
        f"grafana:read:{hashlib.sha256(b'read-token').hexdigest()}",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def bearer(token: str) -> dict[str, str]:
    """An Authorization: Bearer header."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_site(tmp_path: Path) -> Iterator[str]:
    """A daemon whose pages take the token file's bearer tokens; its pages' base URL."""
    mport = free_port()
    config = rule_file(free_port(), f"{{port: {mport}, token_file: {token_file(tmp_path)}}}")
    daemon = RouterDaemon(tmp_path / "router", config).start()
    try:
        yield f"http://{LOOPBACK}:{mport}"
    finally:
        daemon.stop()


def test_a_bearer_token_opens_the_pages_and_a_wrong_one_is_refused(token_site: str) -> None:
    """token_file: no header or a wrong token 401 (challenge Bearer); a right token 200."""
    rsp = httpx.get(f"{token_site}/destinations")
    assert rsp.status_code == 401 and rsp.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(f"{token_site}/", headers=bearer("guess")).status_code == 401
    page = httpx.get(f"{token_site}/destinations", headers=bearer("read-token"))
    assert page.status_code == 200 and "grafana (read)" in page.text


def test_an_admin_token_acts_without_a_csrf_token_and_a_read_token_may_not(
    token_site: str,
) -> None:
    """A script's POST with the admin token is done (303, no CSRF token needed); with the
    read token it is refused 403."""
    url = f"{token_site}/actions/purge"
    done = httpx.post(url, headers=bearer("admin-token"), data={"destination": "pacs"})
    assert done.status_code == 303 and "0 dead letters of pacs purged" in done.text
    refused = httpx.post(url, headers=bearer("read-token"), data={"destination": "pacs"})
    assert refused.status_code == 403 and "role read" in refused.text
