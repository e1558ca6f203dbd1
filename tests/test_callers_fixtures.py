"""`callers` seen by everything that judges a rule file: fixtures, `check`, lint, the log.

A fixture from a sender that `callers` refuses gets no association, as a real one does
(A-ASSOCIATE-RJ); `check` lists who may associate; `--strict` flags rules that only
refused senders could reach; the JSON log line of a refusal carries an `event`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.cli import main
from router.rules.ruleset import load
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import pyn_rejected

GATED = """\
version: 1
listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {{port}}}}
spool: spool
spool_min_free: 1MiB
callers: [{{ae_title: CT_1}}, {{ae_title: "MR_*", hosts: [10.1.0.0/16]}}]
destinations:
  archive: {{path: "archive/{{SOPInstanceUID}}.dcm"}}
rules:
  - name: no-test-senders
    match: {{calling_ae: "TEST*"}}
    actions: [{{reject: 0x0124}}]
default: [{{store: archive}}]
tests:
{tests}"""

TEST_CT_REJECTED = """\
  - name: test-ct-not-admitted
    instance: {calling_ae: TEST_CT}
    expect: {associate: rejected}
"""
TEST_CT_BY_RULE = """\
  - name: test-ct-refused-by-rule
    instance: {calling_ae: TEST_CT}
    expect: {rule: no-test-senders, status: 0x0124}
"""


def rule_file(tmp_path: Path, tests: str) -> Path:
    """A gated rule file with the given `tests:` entries, in tmp_path."""
    path = tmp_path / "gated.yaml"
    path.write_text(GATED.format(tests=tests).replace("{port}", "11112"), encoding="utf-8")
    return path


def test_fixture_from_a_refused_caller_gets_no_rule(tmp_path: Path) -> None:
    """A fixture expecting the rule's 0x0124 from a sender `callers` refuses fails."""
    loaded = load(rule_file(tmp_path, TEST_CT_BY_RULE))
    assert [r.passed for r in loaded.fixtures] == [False]
    assert loaded.fixtures[0].got["associate"] == "rejected"
    assert "rule expected no-test-senders got None" in loaded.fixture_failures[0].message


def test_fixture_may_expect_the_association_rejected(tmp_path: Path) -> None:
    """`expect: {associate: rejected}` passes for a refused sender, fails for an admitted one."""
    text = TEST_CT_REJECTED + TEST_CT_REJECTED.replace("TEST_CT", "CT_1").replace(
        "test-ct-not-admitted", "ct-1-admitted"
    )
    loaded = load(rule_file(tmp_path, text))
    assert [(r.name, r.passed) for r in loaded.fixtures] == [
        ("test-ct-not-admitted", True),
        ("ct-1-admitted", False),
    ]


def test_fixture_verdict_is_the_daemons(router: object, tmp_path: Path) -> None:
    """The daemon starts with the `associate: rejected` fixture, and rejects a real TEST_CT."""
    d: RouterDaemon = router(GATED.format(tests=TEST_CT_REJECTED))  # type: ignore[operator]
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    rj = pyn_rejected(d.port, [source], calling="TEST_CT")
    assert (rj.result, rj.source, rj.reason) == (1, 1, 3)


def test_callers_refusal_log_line_has_an_event(router: object, tmp_path: Path) -> None:
    """In JSON logs, the line of a `callers` refusal carries `event: caller-rejected`."""
    d: RouterDaemon = router(  # type: ignore[operator]
        GATED.format(tests=TEST_CT_REJECTED), args=("--log-format", "json")
    )
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    pyn_rejected(d.port, [source], calling="TEST_CT")
    d.wait_log("calling AE not in callers")
    lines = [json.loads(line) for line in d.log().splitlines() if "not in callers" in line]
    assert lines  # one per attempt: the peer may try again after losing a race with the RJ
    assert {line.get("event") for line in lines} == {"caller-rejected"}


def test_check_lists_who_may_associate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` prints one `callers` line per entry (and says so when anyone may associate)."""
    assert main(["check", str(rule_file(tmp_path, TEST_CT_REJECTED))]) == 0
    out = capsys.readouterr().out
    assert "  callers   CT_1 from any address\n  callers   MR_* from 10.1.0.0/16\n" in out
    assert main(["check", "config/router.yaml"]) == 0
    assert "  callers   any calling AE title, from any address\n" in capsys.readouterr().out


def test_strict_check_flags_a_rule_only_refused_callers_could_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`TEST*` is no caller's title: a warning at the rule, and `check --strict` exits 1."""
    path = rule_file(tmp_path, TEST_CT_REJECTED)
    assert main(["check", "--strict", str(path)]) == 1
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning:" in line]
    assert warnings == [
        f"warning: {path}:9:5: rules.1 (no-test-senders) can never match: `callers` lets none"
        " of its calling AE titles (TEST*) associate"
    ]


def test_a_rule_for_a_caller_glob_is_not_flagged(tmp_path: Path) -> None:
    """A rule for `MR_7`, `CT_*` or `M*` may meet a caller: no warning."""
    text = GATED.format(tests=TEST_CT_REJECTED).replace('"TEST*"', "[MR_7, 'CT_*', 'M*']")
    text = text.replace("{port}", "11112")
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    assert load(path).warnings == []
