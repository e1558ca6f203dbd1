"""Collected series and studies (`forward: {collect: ...}`, `notify:`, `studies:`) over real peers.

The router runs as `dicom-router run` with two receiving workers; DCMTK's storescu sends
a study of three series on two associations at once; DCMTK's storescp is the collecting
destination, and an http.server in this process is the webhook.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import LOOPBACK, DicomWebOrthanc, StoreSCP, WebhookReceiver, free_port, storescu
from tests.prom import scrape, value, wait_value

pytestmark = pytest.mark.interop

Router = Callable[..., RouterDaemon]
FAST_RETRY = "{initial_delay: 0.2s, max_delay: 1s}"
M = "dicom_router_"


@dataclass
class Study:
    """A study of three series written to disk: its UIDs, and each file's place in it."""

    uid: str
    series: list[str]
    files: list[Path]
    place: dict[str, tuple[int, int]]  # SOP Instance UID -> (SeriesNumber, InstanceNumber)


def make_study(folder: Path, sizes: tuple[int, ...] = (4, 3, 3)) -> Study:
    """A CT study: series 1..N of `sizes` instances, numbered from 1."""
    study = generate_uid()
    series = [generate_uid() for _ in sizes]
    files, place = [], {}
    for number, (uid, count) in enumerate(zip(series, sizes, strict=True), start=1):
        for i in range(1, count + 1):
            path = folder / f"s{number}-{i:03d}.dcm"
            sop = make_ct(
                path, 2048, study_uid=study, series_uid=uid, SeriesNumber=number, InstanceNumber=i
            )
            files.append(path)
            place[str(sop)] = (number, i)
    return Study(study, series, files, place)


def rules(
    scp: StoreSCP,
    hook_url: str,
    *,
    collect: str = "series",
    studies: str = "",
    notify: str = "on: study",
    auth: str = "",
) -> str:
    """Two workers; every instance collected for storescp and notified per study."""
    return f"""\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}, workers: 2}}
spool: spool
spool_min_free: 1MiB
studies: {{quiet: 1s{studies}}}
destinations:
  ai: {{ae_title: {scp.ae_title}, host: {LOOPBACK}, port: {scp.port}, retry: {FAST_RETRY}}}
  orch: {{webhook: {{url: "{hook_url}"{auth}}}, retry: {FAST_RETRY}}}
rules: []
default:
  - forward: {{to: ai, collect: {collect}}}
  - notify: {{to: orch, {notify}}}
"""


def send_at_once(port: int, parts: list[list[Path]]) -> None:
    """Each part on its own storescu association, all at the same time; all acked."""
    results: list[Any] = [None] * len(parts)

    def run(i: int) -> None:
        results[i] = storescu(port, parts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.ok for r in results), results


def associations(scp: StoreSCP) -> int:
    """Associations storescp accepted (its -v log)."""
    return (scp.workdir / "storescp.log").read_text().count("Association Received")


def arrival_order(scp: StoreSCP, study: Study) -> list[tuple[int, int]]:
    """(SeriesNumber, InstanceNumber) of what storescp received, in arrival order.

    By the files' modification times: storescp runs --exec-on-reception without waiting,
    so received.txt may list two quick instances out of order.
    """
    files = sorted(scp.files(), key=lambda p: p.stat().st_mtime_ns)
    return [study.place[str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)] for p in files]


def runs(order: list[tuple[int, int]]) -> dict[int, list[int]]:
    """InstanceNumbers per series, checking each series arrived in one unbroken run."""
    out: dict[int, list[int]] = {}
    for i, (series, instance) in enumerate(order):
        assert i == 0 or series == order[i - 1][0] or series not in out, order
        out.setdefault(series, []).append(instance)
    return out


def units(daemon: RouterDaemon) -> list[tuple[str, str, str | None, float, float | None]]:
    """(level, state, reason, last_at, completed_at) of every received unit, read-only."""
    path = daemon.workdir / "spool" / "queue.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT level, state, reason, last_at, completed_at FROM received_units"
        ).fetchall()


def split(study: Study) -> list[list[Path]]:
    """Two associations' files: series 1 and half of 3 reversed; series 2 and the rest."""
    s1, s2, s3 = ([f for f in study.files if f.name.startswith(f"s{n}-")] for n in (1, 2, 3))
    return [s1 + s3[:2][::-1], s2 + s3[2:]]


def test_a_study_from_two_associations_reaches_storescp_one_association_per_series(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """Three series sent on two associations at once arrive as three ordered associations."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url))
    send_at_once(daemon.port, split(study))
    store_scp.wait_count(len(study.files))
    assert runs(arrival_order(store_scp, study)) == {1: [1, 2, 3, 4], 2: [1, 2, 3], 3: [1, 2, 3]}
    assert associations(store_scp) == 3
    for level, state, reason, last_at, completed_at in units(daemon):
        assert (state, reason) == ("complete", "quiet"), level
        assert completed_at is not None and completed_at >= last_at + 1.0
    ((_, body),) = webhook.wait_posts(1)
    assert body["study_instance_uid"] == study.uid
    assert (body["instances"], body["reason"], body["calling_ae"]) == (10, "quiet", "STORESCU")
    assert sorted(s["instances"] for s in body["series"]) == [3, 3, 4]
    assert "PatientID" not in body


def test_a_collected_study_goes_over_one_association(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """collect: study sends the three series together, on one association, in order."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url, collect="study"))
    send_at_once(daemon.port, split(study))
    store_scp.wait_count(len(study.files))
    order = arrival_order(store_scp, study)
    assert order == sorted(order)
    assert associations(store_scp) == 1


def test_kill9_mid_collection_completes_the_study_after_restart(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """Killed while collecting, the restarted daemon sends every acknowledged instance."""
    study = make_study(tmp_path / "study")
    daemon = router(rules(store_scp, webhook.url, studies=", max_wait: 1h").replace("1s", "30s"))
    send_at_once(daemon.port, split(study))
    daemon.kill9()
    assert store_scp.count() == 0  # 30 s quiet: nothing was due yet
    daemon.write_config(rules(store_scp, webhook.url))  # quiet 1 s from here on
    daemon.start()
    store_scp.wait_count(len(study.files))
    assert sorted(arrival_order(store_scp, study)) == sorted(study.place.values())
    assert associations(store_scp) == 3


def test_notify_per_series_sends_the_bearer_token_and_only_the_listed_patient_data(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """on: series POSTs once per series, with the token file's bearer and include's keys."""
    study = make_study(tmp_path / "study")
    config = rules(
        store_scp,
        webhook.url,
        notify="on: series, include: [PatientID]",
        auth=", auth: {type: bearer, token_file: orch.token}",
    )
    daemon = RouterDaemon(tmp_path / "router", config)
    (daemon.workdir / "orch.token").write_text("s3cret\n")
    daemon.start()
    try:
        storescu(daemon.port, study.files)
        posts = webhook.wait_posts(3)
    finally:
        daemon.stop()
    assert {h["Authorization"] for h, _ in posts} == {"Bearer s3cret"}
    assert sorted(b["series_instance_uid"] for _, b in posts) == sorted(study.series)
    assert {b["PatientID"] for _, b in posts} == {"TEST0001"}
    assert all("AccessionNumber" not in b for _, b in posts)


def test_a_failing_webhook_is_retried_until_it_takes_the_one_notification(
    tmp_path: Path, router: Router, store_scp: StoreSCP
) -> None:
    """HTTP 500 then 503: the queue retries the POST; it is accepted once, then no more."""
    hook = WebhookReceiver(answers=[500, 503])
    try:
        study = make_study(tmp_path / "study", sizes=(2,))
        daemon = router(rules(store_scp, hook.url))
        storescu(daemon.port, study.files)
        hook.wait_posts(1)
        assert hook.tries == 3
    finally:
        hook.close()


def test_check_warns_about_an_unreadable_token_file_and_refuses_a_bad_url(
    tmp_path: Path, store_scp: StoreSCP
) -> None:
    """`check` names the missing token file; a URL that is not http(s) is an error (exit 1)."""
    daemon = RouterDaemon(
        tmp_path, rules(store_scp, "https://orch.example/api", auth=", auth: {type: bearer, "
                        "token_file: missing.token}")
    )  # fmt: skip
    run = subprocess.run(
        [str(DICOM_ROUTER), "check", str(daemon.config_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "destinations.orch.webhook.auth.token_file:" in run.stdout
    assert "missing.token cannot be read" in run.stdout
    assert "webhook POST https://orch.example/api (bearer token from file" in run.stdout
    daemon.write_config(rules(store_scp, "ftp://orch.example/api"))
    run = subprocess.run(
        [str(DICOM_ROUTER), "check", str(daemon.config_path)], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "destinations.orch.webhook.url" in run.stderr


def cli(daemon: RouterDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`dicom-router ARGS` on the daemon's rule file."""
    return subprocess.run(
        [str(DICOM_ROUTER), args[0], str(daemon.config_path), *args[1:]],
        cwd=daemon.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_on_release_completes_a_series_when_its_association_is_released(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """on_release: true sends the series at the release, long before the 60 s quiet time."""
    study = make_study(tmp_path / "study", sizes=(3,))
    config = rules(store_scp, webhook.url, studies=", on_release: true").replace("1s", "60s")
    daemon = router(config)
    storescu(daemon.port, study.files)
    store_scp.wait_count(3, timeout=20)
    assert {(level, reason) for level, _, reason, _, _ in units(daemon)} == {
        ("series", "released"),
        ("study", "released"),
    }


def test_max_wait_completes_a_unit_whose_quiet_time_never_comes(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """quiet 60 s, max_wait 2 s: the series is sent after max_wait, logged as such."""
    study = make_study(tmp_path / "study", sizes=(2,))
    daemon = router(rules(store_scp, webhook.url, studies=", max_wait: 2s").replace("1s", "60s"))
    storescu(daemon.port, study.files)
    store_scp.wait_count(2, timeout=20)
    assert {reason for _, _, reason, _, _ in units(daemon)} == {"max_wait"}
    daemon.wait_log("complete (max_wait)")


@pytest.mark.parametrize(("late", "expected"), [("send", 3), ("resend", 5), ("hold", 2)])
def test_a_late_instance_follows_the_late_policy(
    tmp_path: Path,
    router: Router,
    store_scp: StoreSCP,
    webhook: WebhookReceiver,
    late: str,
    expected: int,
) -> None:
    """After its series completed: send it alone, resend the series, or hold it (trace shows)."""
    study = make_study(tmp_path / "study", sizes=(3,))
    daemon = router(rules(store_scp, webhook.url, studies=f", late: {late}"))
    storescu(daemon.port, study.files[:2])
    store_scp.wait_count(2)
    webhook.wait_posts(1, settle=0)
    storescu(daemon.port, study.files[2:])
    store_scp.wait_count(expected)
    daemon.wait_log(f"came after its series was complete: late: {late}")
    if late == "hold":
        shown = cli(daemon, "trace", study.series[0]).stdout
        assert "3 instance(s) from STORESCU, complete (quiet)" in shown
        assert "1 late, 1 deliveries held" in shown
        assert store_scp.count() == 2
        done = cli(daemon, "studies", "complete", study.series[0])
        assert done.returncode == 0, done.stderr
        store_scp.wait_count(3)
    assert associations(store_scp) == 2


def test_studies_lists_what_is_collecting_and_complete_forces_it(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """`studies` lists the study and its series; `studies complete STUDY` sends them (forced)."""
    study = make_study(tmp_path / "study", sizes=(2, 1))
    daemon = router(rules(store_scp, webhook.url).replace("1s", "1h"))
    storescu(daemon.port, study.files)
    listed = cli(daemon, "studies").stdout
    assert f"study   {study.uid}" in listed
    assert all(f"series  {uid}" in listed for uid in study.series)
    done = cli(daemon, "studies", "complete", study.uid)
    assert done.returncode == 0, done.stderr
    assert "3 series/studies to complete (forced)" in done.stdout
    store_scp.wait_count(3)
    assert {reason for _, _, reason, _, _ in units(daemon)} == {"forced"}
    assert cli(daemon, "studies", "complete", "1.2.3.999").returncode == 1


def test_metrics_show_studies_collecting_their_age_and_completions_by_reason(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """/metrics: one study collecting with its age, then a forced completion counted."""
    port = free_port()
    config = rules(store_scp, webhook.url).replace("1s", "1h") + f"metrics: {{port: {port}}}\n"
    study = make_study(tmp_path / "study", sizes=(1,))
    daemon = router(config)
    storescu(daemon.port, study.files)
    wait_value(port, M + "studies_oldest_collecting_age_seconds", lambda v: v >= 1)
    assert value(scrape(port), M + "studies_collecting") == 1
    assert cli(daemon, "studies", "complete", study.uid).returncode == 0
    store_scp.wait_count(1)
    wait_value(port, M + "studies_collecting", lambda v: v == 0)
    got = scrape(port)
    assert value(got, M + "units_completed_total", level="study", reason="forced") == 1
    assert value(got, M + "units_completed_total", level="series", reason="forced") == 1


def test_explain_says_collected_per_series_sent_when_complete(
    tmp_path: Path, store_scp: StoreSCP
) -> None:
    """`explain` names each collecting action and when its unit completes."""
    study = make_study(tmp_path / "study", sizes=(1,))
    daemon = RouterDaemon(tmp_path / "router", rules(store_scp, "https://orch.example/hook"))
    shown = cli(daemon, "explain", str(study.files[0])).stdout
    assert "actions forward:ai(series), notify:orch(study)" in shown
    assert "collect forward:ai collected per series, sent when complete (quiet 1 s" in shown
    assert "collect notify:orch one POST per study when complete" in shown


def test_a_collected_study_goes_to_orthanc_dicomweb_in_one_stow_request(
    tmp_path: Path, router: Router, web_orthanc: DicomWebOrthanc
) -> None:
    """collect: study to a STOW-RS destination: one POST carries the whole study."""
    port = free_port()
    study = make_study(tmp_path / "study", sizes=(4, 3, 3))
    config = f"""\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}, workers: 2}}
spool: spool
spool_min_free: 1MiB
metrics: {{port: {port}}}
studies: {{quiet: 1s}}
destinations:
  web: {{url: "{web_orthanc.stow_url}", auth: {{type: basic, username: {web_orthanc.user},
         password_env: WEB_PW}}, batch: {{max_instances: 2}}, retry: {FAST_RETRY}}}
rules: []
default:
  - forward: {{to: web, collect: study}}
"""
    daemon = router(config, env={"WEB_PW": web_orthanc.password})
    send_at_once(daemon.port, split(study))
    web_orthanc.wait_count(len(study.files))
    wait_value(port, M + "delivery_duration_seconds_count", lambda v: v >= 1, destination="web")
    assert value(scrape(port), M + "delivery_duration_seconds_count", destination="web") == 1


def test_a_forwarder_killed_mid_collection_is_restarted_and_completes_the_study(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """kill -9 of the forwarder (the sweeper's process): its successor completes the study."""
    study = make_study(tmp_path / "study", sizes=(2, 2))
    daemon = router(rules(store_scp, webhook.url, collect="study").replace("1s", "5s"))
    storescu(daemon.port, study.files)
    (forwarder,) = daemon.forwarders()
    os.kill(forwarder, signal.SIGKILL)
    assert store_scp.count() == 0  # killed within the quiet time
    store_scp.wait_count(len(study.files))
    assert associations(store_scp) == 1
    assert daemon.forwarders() != [forwarder]
    webhook.wait_posts(1)


def test_on_release_completes_at_most_256_units_the_rest_after_their_quiet_time(
    tmp_path: Path, router: Router, store_scp: StoreSCP, webhook: WebhookReceiver
) -> None:
    """300 series on one association: the release completes 256 units (the study and 255
    series); the other 45 series complete by their quiet time, none is lost."""
    folder = tmp_path / "many"
    folder.mkdir()
    study = generate_uid()
    files = [folder / f"{i:03d}.dcm" for i in range(300)]
    for i, path in enumerate(files):
        make_ct(path, 0, study_uid=study, SeriesNumber=i + 1, InstanceNumber=1)
    # A quiet time far longer than the send (about 3 s; 30 s leaves room for a loaded box),
    # so that only the release or the quiet time after it completes a unit.
    config = rules(store_scp, webhook.url, studies=", on_release: true").replace("1s", "30s")
    daemon = router(config)
    started = time.monotonic()
    assert storescu(daemon.port, files).ok
    assert time.monotonic() - started < 30, "the send outlasted the quiet time"
    store_scp.wait_count(300, timeout=150)
    reasons = Counter(reason for _, _, reason, _, _ in units(daemon))
    assert reasons == {"released": 256, "quiet": 45}
