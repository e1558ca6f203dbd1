"""Rule-file lint: rules that can never match, unused destinations and groups.

Every shadowing case is a pair (earlier match, later match): the later rule is reported
only when the earlier one provably matches everything it matches. The "not reported"
cases matter as much: a false warning teaches people to ignore the warnings.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from router.cli import main
from router.rules.ruleset import LoadedConfig, load
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import storescu

Router = Callable[..., RouterDaemon]

HEAD = """\
version: 1
listen: {ae_title: ROUTER}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
sop_class_groups:
  cross_sectional: [CTImageStorage, MRImageStorage]
"""


def load_text(tmp_path: Path, text: str) -> LoadedConfig:
    """Load a rule file written from `text`."""
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load(path)


def two_rules(tmp_path: Path, earlier: str, later: str) -> list[str]:
    """The warnings of a file whose first rule matches `earlier` and second `later`."""
    text = (
        HEAD
        + "rules:\n"
        + f"  - {{name: first, match: {earlier}, actions: [forward: pacs]}}\n"
        + f"  - {{name: second, match: {later}, actions: [forward: pacs]}}\n"
        + "default: [discard]\n"
        + "tests:\n  - {name: g, instance: {sop_class: cross_sectional}, expect: {}}\n"
    )
    return [w.message for w in load_text(tmp_path, text).warnings]


SHADOWED = "rules.2 (second) can never match: rules.1 (first, line 8)"

CASES = [
    # (earlier, later, reported)
    pytest.param("{}", "{calling_ae: CT_1}", True, id="no-keys-shadow-everything"),
    pytest.param("{}", "{}", True, id="two-empty-matches"),
    pytest.param("{calling_ae: CT_1}", "{}", False, id="later-without-keys-is-wider"),
    # sop_class: a superset, with groups resolved
    pytest.param(
        "{sop_class: [CTImageStorage, MRImageStorage]}",
        "{sop_class: CTImageStorage}",
        True,
        id="sop-class-superset",
    ),
    pytest.param(
        "{sop_class: CTImageStorage}",
        "{sop_class: [CTImageStorage, MRImageStorage]}",
        False,
        id="sop-class-subset",
    ),
    pytest.param(
        "{sop_class: cross_sectional}", "{sop_class: MRImageStorage}", True, id="group-superset"
    ),
    pytest.param(
        "{sop_class: CTImageStorage}", "{sop_class: cross_sectional}", False, id="group-wider"
    ),
    pytest.param(
        "{sop_class: '1.2.840.10008.5.1.4.1.1.2'}",
        "{sop_class: CTImageStorage}",
        True,
        id="sop-class-uid-and-keyword-are-one-class",
    ),
    pytest.param(
        "{sop_class: CTImageStorage}", "{calling_ae: CT_1}", False, id="sop-class-vs-unconstrained"
    ),
    # calling_ae / called_ae: globs
    pytest.param("{calling_ae: 'CT*'}", "{calling_ae: CT_1}", True, id="glob-matches-exact"),
    pytest.param("{calling_ae: 'CT*'}", "{calling_ae: 'CT*'}", True, id="same-glob"),
    pytest.param("{calling_ae: '*'}", "{calling_ae: 'MR?'}", True, id="star-covers-any-glob"),
    pytest.param("{calling_ae: CT_1}", "{calling_ae: 'CT*'}", False, id="exact-vs-glob"),
    pytest.param(
        "{calling_ae: 'CT*'}", "{calling_ae: 'CT_*'}", False, id="narrower-glob-not-proved"
    ),
    pytest.param("{calling_ae: 'ct*'}", "{calling_ae: CT_1}", False, id="glob-is-case-sensitive"),
    pytest.param("{calling_ae: [A, B]}", "{calling_ae: A}", True, id="ae-list-superset"),
    pytest.param("{calling_ae: A}", "{calling_ae: [A, B]}", False, id="ae-list-subset"),
    pytest.param(
        "{calling_ae: CT_1}", "{calling_ae: CT_1, called_ae: X}", True, id="later-adds-a-key"
    ),
    pytest.param("{called_ae: 'ROUTER*'}", "{called_ae: ROUTER_2}", True, id="called-ae-glob"),
    pytest.param("{called_ae: ROUTER_2}", "{called_ae: 'ROUTER*'}", False, id="called-ae-exact"),
    # peer: CIDR containment
    pytest.param("{peer: 10.0.0.0/8}", "{peer: 10.1.2.0/24}", True, id="cidr-contains"),
    pytest.param("{peer: 10.1.2.0/24}", "{peer: 10.0.0.0/8}", False, id="cidr-inside"),
    pytest.param("{peer: 10.1.2.3}", "{peer: 10.1.2.3}", True, id="same-ip"),
    pytest.param("{peer: 10.0.0.0/8}", "{peer: [10.1.0.0/16, 192.168.0.1]}", False, id="cidr-part"),
    pytest.param("{peer: '::/0'}", "{peer: 10.1.2.3}", False, id="ipv6-vs-ipv4"),
    pytest.param("{peer: 10.0.0.0/8}", "{calling_ae: X}", False, id="peer-vs-unconstrained"),
    # transfer_syntax: a superset
    pytest.param(
        "{transfer_syntax: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]}",
        "{transfer_syntax: ImplicitVRLittleEndian}",
        True,
        id="transfer-syntax-superset",
    ),
    pytest.param(
        "{transfer_syntax: ImplicitVRLittleEndian}",
        "{transfer_syntax: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]}",
        False,
        id="transfer-syntax-subset",
    ),
    # tags: identical tests, or none in the earlier rule
    pytest.param("{}", "{tags: {Modality: CT}}", True, id="no-tags-vs-tags"),
    pytest.param("{tags: {Modality: CT}}", "{}", False, id="tags-vs-no-tags"),
    pytest.param(
        "{tags: {Manufacturer: {glob: 'ACME*'}}}",
        "{tags: {Manufacturer: {glob: 'ACME*'}}}",
        True,
        id="identical-glob-test",
    ),
    pytest.param(
        "{tags: {Manufacturer: {regex: 'AC.*'}}}",
        "{tags: {Manufacturer: {regex: 'AC.*'}}}",
        True,
        id="identical-regex-test",
    ),
    pytest.param(
        "{tags: {Manufacturer: {regex: 'AC.*'}}}",
        "{tags: {Manufacturer: {regex: 'ACME.*'}}}",
        False,
        id="different-regex",
    ),
    pytest.param("{tags: {Modality: CT}}", "{tags: {Modality: MR}}", False, id="other-value"),
    pytest.param("{tags: {Modality: [CT, MR]}}", "{tags: {Modality: CT}}", True, id="value-list"),
    pytest.param("{tags: {Modality: CT}}", "{tags: {Modality: [CT, MR]}}", False, id="value-more"),
    pytest.param(
        "{tags: {Manufacturer: {glob: 'ACME*'}}}",
        "{tags: {Manufacturer: ACME Medical}}",
        True,
        id="tag-glob-matches-value",
    ),
    pytest.param(
        "{tags: {Manufacturer: {present: true}}}",
        "{tags: {Manufacturer: ACME}}",
        False,
        id="present-not-proved",
    ),
    pytest.param(
        "{tags: {Modality: CT}}",
        "{tags: {Modality: CT, BodyPartExamined: HEAD}}",
        True,
        id="later-adds-a-tag",
    ),
    pytest.param(
        "{tags: {Modality: CT, BodyPartExamined: HEAD}}",
        "{tags: {Modality: CT}}",
        False,
        id="earlier-has-more-tags",
    ),
    # not: conservative
    pytest.param(
        "{calling_ae: 'CT*'}",
        "{calling_ae: CT_1, not: {peer: 10.0.0.0/8}}",
        True,
        id="later-not-only-narrows",
    ),
    pytest.param(
        "{not: {calling_ae: 'TEST*'}}",
        "{calling_ae: CT_1}",
        False,
        id="earlier-not-is-in-doubt",
    ),
    pytest.param(
        "{not: {calling_ae: 'TEST*'}}",
        "{calling_ae: CT_1, not: {calling_ae: 'TEST*'}}",
        True,
        id="same-not",
    ),
    pytest.param(
        "{not: {calling_ae: TEST_1}}",
        "{not: {calling_ae: 'TEST*'}}",
        True,
        id="later-not-excludes-more",
    ),
    pytest.param(
        "{not: {calling_ae: 'TEST*'}}",
        "{not: {calling_ae: TEST_1}}",
        False,
        id="later-not-excludes-less",
    ),
]


@pytest.mark.parametrize(("earlier", "later", "reported"), CASES)
def test_a_rule_that_an_earlier_rule_always_preempts_is_reported(
    tmp_path: Path, earlier: str, later: str, reported: bool
) -> None:
    """The second rule is reported exactly when the first matches everything it matches."""
    warnings = two_rules(tmp_path, earlier, later)
    shadowing = [w for w in warnings if "can never match" in w]
    assert shadowing == ([f"{SHADOWED} matches everything it matches"] if reported else [])


RESEARCH = """\
version: 1
listen: {ae_title: ROUTER}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
  research: {ae_title: RESEARCH, host: 10.0.0.6, port: 104}
rules:
  - name: everything-to-pacs
    actions: [forward: pacs]
  - name: ct-only
    match: {sop_class: CTImageStorage}
    actions: [forward: pacs]
  - name: ct-to-research
    match: {sop_class: CTImageStorage, calling_ae: CT_1}
    actions: [forward: research]
default: [discard]
"""


def test_the_warning_names_both_rules_and_their_lines(tmp_path: Path) -> None:
    """FILE:LINE:COL of the rule that can never match; the first rule that pre-empts it,
    with its line, even when a later one pre-empts it too."""
    loaded = load_text(tmp_path, RESEARCH)
    shown = [str(w) for w in loaded.warnings if "can never match" in w.message]
    path = tmp_path / "rules.yaml"
    assert shown == [
        f"{path}:9:5: rules.2 (ct-only) can never match: rules.1 (everything-to-pacs, line 7)"
        " matches everything it matches",
        f"{path}:12:5: rules.3 (ct-to-research) can never match: rules.1 (everything-to-pacs,"
        " line 7) matches everything it matches",
    ]


def test_a_shadowed_rule_does_not_refuse_the_file(tmp_path: Path) -> None:
    """A warning never refuses the file: the rules load as written."""
    loaded = load_text(tmp_path, RESEARCH)
    assert [r.name for r in loaded.config.rules] == [
        "everything-to-pacs",
        "ct-only",
        "ct-to-research",
    ]


def unused(tmp_path: Path, text: str) -> list[str]:
    """The unused-destination and unused-group warnings of a file."""
    loaded = load_text(tmp_path, text)
    return [str(w) for w in loaded.warnings if "uses this" in w.message]


DESTS = """\
version: 1
listen: {ae_title: ROUTER}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
  archive: {path: "archive/{SOPInstanceUID}.dcm"}
"""


def test_a_destination_nothing_uses_is_reported_at_its_key(tmp_path: Path) -> None:
    """`archive` is defined but no action, default or fixture names it."""
    out = unused(tmp_path, DESTS + "default: [forward: pacs]\n")
    path = tmp_path / "rules.yaml"
    assert out == [
        f"{path}:5:3: destinations.archive: no rule, default or fixture uses this destination"
    ]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param("default: [forward: pacs, store: archive]\n", id="used-by-default"),
        pytest.param(
            "rules: [{name: r, match: {calling_ae: X}, actions: [store: archive]}]\n"
            "default: [forward: pacs]\n",
            id="used-by-a-rule",
        ),
        pytest.param(
            "default: [forward: pacs]\n"
            "tests: [{name: t, instance: {}, expect: {store: [archive]}}]\n",
            id="named-by-a-fixture",
        ),
    ],
)
def test_a_used_destination_is_not_reported(tmp_path: Path, tail: str) -> None:
    """A store or forward anywhere, or a fixture's `expect`, uses a destination."""
    assert unused(tmp_path, DESTS + tail) == []


GROUPS = """\
version: 1
listen: {ae_title: ROUTER}
sop_class_groups:
  reports: [BasicTextSRStorage, EnhancedSRStorage]
  images: [CTImageStorage]
"""


def test_a_group_nothing_uses_is_reported_at_its_key(tmp_path: Path) -> None:
    """`images` is used by no match and no fixture."""
    out = unused(
        tmp_path,
        GROUPS + "rules: [{name: r, match: {sop_class: reports}, actions: [discard]}]\n"
        "default: [discard]\n",
    )
    assert out == [
        f"{tmp_path / 'rules.yaml'}:5:3: sop_class_groups.images: no rule or fixture"
        " uses this group"
    ]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(
            "rules: [{name: r, match: {sop_class: [reports, images]}, actions: [discard]}]\n",
            id="in-a-list",
        ),
        pytest.param(
            "rules: [{name: r, match: {sop_class: reports, not: {sop_class: images}},"
            " actions: [discard]}]\n",
            id="in-a-not",
        ),
        pytest.param(
            "rules: [{name: r, match: {sop_class: reports}, actions: [discard]}]\n"
            "tests: [{name: t, instance: {sop_class: images}, expect: {rule: default}}]\n",
            id="by-a-fixture",
        ),
    ],
)
def test_a_used_group_is_not_reported(tmp_path: Path, tail: str) -> None:
    """A group named in a match (nested `not` too) or a fixture instance is used."""
    assert unused(tmp_path, GROUPS + tail + "default: [discard]\n") == []


def test_the_shipped_rule_files_have_no_warnings() -> None:
    """The embedded default and the examples are lint-clean."""
    repo = Path(__file__).resolve().parents[1]
    for path in [repo / "config" / "router.yaml", *sorted((repo / "config/examples").glob("*"))]:
        assert [str(w) for w in load(path).warnings] == [], path


# --- where the warnings show: check, check --strict, explain, the daemon ---------------


def write_rules(tmp_path: Path, text: str) -> Path:
    """Write a rule file and return its path."""
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_check_prints_the_warnings_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warnings are printed as `warning: FILE:LINE:COL: ...`; the file is still valid."""
    path = write_rules(tmp_path, RESEARCH)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {path}:12:5: rules.3 (ct-to-research) can never match" in out


def test_check_strict_exits_1_on_any_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --strict` gates CI: a warning fails it."""
    path = write_rules(tmp_path, DESTS + "default: [forward: pacs]\n")
    assert main(["check", "--strict", str(path)]) == 1
    assert "destinations.archive: no rule, default or fixture uses" in capsys.readouterr().out


def test_check_strict_exits_0_without_warnings(tmp_path: Path) -> None:
    """A clean file passes `check --strict`."""
    path = write_rules(tmp_path, DESTS + "default: [forward: pacs, store: archive]\n")
    assert main(["check", "--strict", str(path)]) == 0


SHADOWING = """\
version: 1
listen: {ae_title: ROUTER}
spool: spool
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
rules:
  - name: ct-to-pacs
    match: {sop_class: CTImageStorage}
    actions: [forward: pacs]
  - name: ct-scanner
    match: {calling_ae: 'CT*'}
    actions: [discard]
  - name: mr
    match: {sop_class: MRImageStorage}
    actions: [discard]
  - name: acme
    match: {tags: {Manufacturer: ACME}}
    actions: [discard]
default: [discard]
"""


def explain_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    """`explain` of one generated CT with SHADOWING's rules; its stdout."""
    path = write_rules(tmp_path, SHADOWING)
    ct = tmp_path / "ct.dcm"
    make_ct(ct, size=0, Manufacturer="ACME")
    assert main(["explain", str(path), str(ct), *args]) == 0
    return capsys.readouterr().out


def test_explain_names_the_later_rules_the_match_shadows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CT from CT_1 matches ct-to-pacs first; ct-scanner and acme (by its tags) would
    also match, mr would not."""
    out = explain_rules(capsys, tmp_path, "--calling-ae", "CT_1")
    assert "  rule    ct-to-pacs\n" in out
    assert "  shadows ct-scanner, acme (would also match; the first match wins)\n" in out


def test_explain_says_nothing_when_no_later_rule_would_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No `shadows` line when the matching rule hides nothing for this instance."""
    path = write_rules(tmp_path, SHADOWING)
    ct = tmp_path / "ct.dcm"
    make_ct(ct, size=0, Manufacturer="OTHER")
    assert main(["explain", str(path), str(ct), "--calling-ae", "MR_1"]) == 0
    out = capsys.readouterr().out
    assert "  rule    ct-to-pacs\n" in out
    assert "shadows" not in out


def test_a_reload_logs_the_warnings_and_applies(router: Router, tmp_path: Path) -> None:
    """A file with a dead rule and an unused destination is logged and swapped in."""
    base = """\
    version: 1
    listen: {ae_title: DICOM_ROUTER, port: {port}}
    spool: spool
    destinations:
      archive: {path: "archive/{SOPInstanceUID}.dcm"}
    default: [store: archive]
    """
    d = router(base)
    assert "can never match" not in d.log()
    d.write_config(
        base.replace(
            "    default: [store: archive]\n",
            """\
      unused: {path: "other/{SOPInstanceUID}.dcm"}
    rules:
      - {name: all, actions: [store: archive]}
      - {name: ct, match: {sop_class: CTImageStorage}, actions: [discard]}
    default: [store: archive]
    """,
        )
    )
    d.wait_log("reloaded")
    log = d.log()
    assert re.search(
        r"WARNING router.daemon: \S+router.yaml:\d+:\d+: rules.2 \(ct\) can never match: "
        r"rules.1 \(all, line \d+\) matches everything it matches",
        log,
    ), log
    assert "destinations.unused: no rule, default or fixture uses this destination" in log
    ct = tmp_path / "ct.dcm"
    make_ct(ct, size=0)
    assert storescu(d.port, [ct]).ok
    assert len(list((d.workdir / "archive").glob("*.dcm"))) == 1  # rule `all` decided


def test_start_up_logs_the_warnings_and_serves(router: Router) -> None:
    """`run` with warnings starts (they are logged), like a reload applies them."""
    d = router(
        """\
        version: 1
        listen: {ae_title: DICOM_ROUTER, port: {port}}
        spool: spool
        destinations:
          archive: {path: "archive/{SOPInstanceUID}.dcm"}
          unused: {path: "other/{SOPInstanceUID}.dcm"}
        default: [store: archive]
        """
    )
    d.wait_log("destinations.unused: no rule, default or fixture uses this destination")
    assert "WARNING router.daemon: " in d.log()
