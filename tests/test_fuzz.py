"""Fuzzing the real daemon (issue 7): 2,000 mutated PDUs and 1,000 mutated datasets.

One campaign runs per module (tests/fuzz/: seeded, every case replayable with
`python -m tests.fuzz --replay NAME`); each test checks one property over it, so a
failure names the property. docs/security.md says what is bounded and how to run longer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.checks import (
    LONGEST_LINE,
    RSS_GROWTH_LIMIT_KIB,
    STOP_LIMIT,
    Report,
    rss_growth_kib,
    run_campaign,
    summary,
)
from tests.peers import dcmdump_failures

# The campaign has a time budget and runs eight senders: alone, after the parallel run.
pytestmark = [pytest.mark.interop, pytest.mark.alone]

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
PDUS, DATASETS = 2000, 1000
CAMPAIGN_BUDGET = 45.0  # seconds for the cases alone; the test as a whole stays under 60


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The campaign daemon's folder (its rule file, log and store folder `archive/`)."""
    return tmp_path_factory.mktemp("fuzz") / "router"


@pytest.fixture(scope="module")
def campaign(campaign_dir: Path) -> Report:
    """The campaign every test here checks, run once against a fresh daemon."""
    report = run_campaign(campaign_dir, SEED, PDUS, DATASETS, workers=8, log_format="json")
    print(summary(report))  # shown with the first failure, or with -s
    return report


def examples(report: Report, violation: str) -> str:
    """A few failing cases, replayable by name."""
    found = report.violations(violation)
    return f"{len(found)} cases, e.g. " + ", ".join(
        f"{r.name} {r.kind} -> {r.outcome} ({r.invalid or ''}{r.detail})" for r in found[:8]
    )


def test_the_campaign_ran_every_case_in_time(campaign: Report) -> None:
    """All 3,000 cases ran, none broke the harness, within the CI budget."""
    assert len(campaign.results) == PDUS + DATASETS
    assert campaign.violations("harness-error") == [], examples(campaign, "harness-error")
    assert campaign.campaign.seconds < CAMPAIGN_BUDGET


def test_valid_controls_are_answered_as_valid(campaign: Report) -> None:
    """Unmutated cases among the fuzz succeed: the harness can tell success from failure."""
    controls = [r for r in campaign.results if r.kind in ("valid", "deflate-valid")]
    assert controls and {r.outcome for r in controls} == {"0x0000"}
    probes = [r for r in campaign.results if r.kind == "pdata-valid"]
    assert probes and {(r.outcome, r.status) for r in probes} == {("survived", 0)}


def test_no_structurally_invalid_dataset_gets_success(campaign: Report) -> None:
    """Every dataset the oracle calls structurally invalid is refused (never 0x0000/warning)."""
    assert campaign.violations("invalid-dataset-acknowledged") == [], examples(
        campaign, "invalid-dataset-acknowledged"
    )


def test_every_well_framed_c_store_is_answered(campaign: Report) -> None:
    """A C-STORE whose PDUs are valid gets a status, whatever its dataset holds."""
    assert campaign.violations("store-unanswered") == [], examples(campaign, "store-unanswered")


def test_the_router_closes_every_connection_the_client_gave_up(campaign: Report) -> None:
    """After a broken PDU and the sender's EOF, the router closes within network_timeout + 3 s."""
    assert campaign.violations("held-open") == [], examples(campaign, "held-open")


def test_a_sender_that_stalls_mid_pdu_is_dropped(campaign: Report) -> None:
    """A connection left open and silent after part of a PDU is closed by the router."""
    assert campaign.violations("stall-not-dropped") == [], examples(campaign, "stall-not-dropped")


def test_c_echo_still_works_after_the_campaign(campaign: Report) -> None:
    """DCMTK echoscu gets a C-ECHO answered once the fuzzing is over."""
    assert campaign.echo_ok, campaign.echo_output


def test_sigterm_after_the_campaign_stops_promptly(campaign: Report) -> None:
    """Once the fuzzing senders are gone, SIGTERM ends the daemon with exit 0 within 5 s."""
    assert (campaign.exit_code, campaign.stop_seconds <= STOP_LIMIT) == (0, True), (
        f"exit {campaign.exit_code} after {campaign.stop_seconds:.1f} s"
    )


def test_rss_stays_bounded(campaign: Report) -> None:
    """The daemon's and its children's summed RSS rises at most 100 MiB above idle."""
    growth = rss_growth_kib(campaign)
    assert growth <= RSS_GROWTH_LIMIT_KIB, (
        f"RSS rose {growth / 1024:.0f} MiB above idle "
        f"({campaign.campaign.baseline_rss_kib / 1024:.0f} MiB)"
    )


def test_spool_incoming_and_work_are_empty_afterwards(campaign: Report) -> None:
    """No partial receive or modify output is left in spool/incoming or spool/work."""
    assert campaign.spool_leftovers == []


def test_the_store_folder_holds_exactly_the_acknowledged_instances(campaign: Report) -> None:
    """archive/ has one file per acknowledged case and nothing else, anywhere."""
    assert campaign.stray_files == []


def test_no_traceback_in_the_daemon_log(campaign: Report) -> None:
    """Nothing the peers sent made the daemon (or pynetdicom inside it) log a traceback."""
    assert campaign.tracebacks == [], f"{len(campaign.tracebacks)} tracebacks, first:\n" + (
        campaign.tracebacks[0] if campaign.tracebacks else ""
    )


def bad_line_examples(report: Report, prop: str) -> str:
    """How many log lines break `prop`, and the first few."""
    found = report.bad_lines[prop]
    return f"{len(found)} of {report.log_lines} lines, e.g. " + "\n".join(
        repr(line[:300]) for line in found[:5]
    )


def test_every_log_line_is_json(campaign: Report) -> None:
    """Under --log-format json every line of the daemon's stdout and stderr is one record."""
    assert campaign.log_format == "json"
    assert campaign.bad_lines["not-a-record"] == [], bad_line_examples(campaign, "not-a-record")


def test_no_log_line_holds_an_unescaped_control_byte(campaign: Report) -> None:
    """No NUL, escape or other control byte a sender chose reaches a log line raw."""
    assert campaign.bad_lines["control-byte"] == [], bad_line_examples(campaign, "control-byte")


def test_no_log_line_names_an_exception_class(campaign: Report) -> None:
    """Every abort reason is in protocol terms: no AttributeError, InvalidEventError, ..."""
    assert campaign.bad_lines["exception-name"] == [], bad_line_examples(campaign, "exception-name")


def test_log_lines_are_bounded(campaign: Report) -> None:
    """Values a sender chose are cut before they reach a record: no line is longer than 2 KiB."""
    assert campaign.longest_line <= LONGEST_LINE


def test_every_file_the_router_stores_is_read_by_dcmdump(
    campaign: Report, campaign_dir: Path
) -> None:
    """DCMTK's dcmdump reads every file in the store folder by its meta's transfer syntax."""
    stored = sorted((campaign_dir / "archive").glob("*.dcm"))
    assert stored, "the campaign stored nothing"
    failures = dcmdump_failures(stored)
    assert failures == {}, f"{len(failures)} of {len(stored)} unreadable, e.g. " + "; ".join(
        f"{Path(p).name}: {e[:200]}" for p, e in list(failures.items())[:3]
    )
