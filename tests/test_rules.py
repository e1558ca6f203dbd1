"""The pure rule engine (design §4 match/actions, §9): a Config and Facts in, a Decision out."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    UltrasoundImageStorage,
)

from router.config.model import Config
from router.rules.engine import Decision, Facts, NeedsTags, decide, planned_status, wanted_tags
from router.rules.ruleset import load

HEAD = """\
version: 1
listen: {ae_title: ROUTER}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
  ai: {ae_title: AI, host: 10.0.0.6, port: 104}
  archive: {path: "archive/{PatientID}/{SOPInstanceUID}.dcm"}
sop_class_groups:
  cross_sectional: [CTImageStorage, MRImageStorage]
"""


def config_from(tmp_path: Path, body: str) -> Config:
    """Load HEAD plus `body` (rules, default...) as a rule file and return its Config."""
    path = tmp_path / "router.yaml"
    path.write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    return load(path).config


def one_rule(tmp_path: Path, match: str) -> Config:
    """A config whose one rule `hit` (forward: pacs) has this flow match; default stores."""
    return config_from(
        tmp_path,
        f"""\
        rules:
          - name: hit
            match: {match}
            actions: [forward: pacs]
        default: [store: archive]
        """,
    )


def facts(
    sop_class_uid: str = CTImageStorage,
    calling_ae: str = "CT_SCANNER_1",
    called_ae: str = "ROUTER",
    peer: str = "10.1.2.3",
    transfer_syntax: str = ExplicitVRLittleEndian,
    tags: Mapping[str, tuple[str, ...]] | None = None,
) -> Facts:
    """Facts of one C-STORE with plausible defaults."""
    return Facts(sop_class_uid, calling_ae, called_ae, peer, transfer_syntax, tags)


def decided(config: Config, f: Facts) -> Decision:
    """decide() that must not ask for tags."""
    result = decide(config, f)
    assert isinstance(result, Decision), result
    return result


def rule_for(config: Config, f: Facts) -> str:
    """The name of the rule that decides `f`."""
    return decided(config, f).rule


# --- order ---------------------------------------------------------------------------


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    """When several rules match, the first one in the file decides."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: first
            match: {sop_class: CTImageStorage}
            actions: [forward: pacs]
          - name: second
            match: {calling_ae: CT_SCANNER_1}
            actions: [forward: ai]
        default: [store: archive]
        """,
    )
    decision = decided(config, facts())
    assert decision.rule == "first"
    assert decision.forwards == ["pacs"]


def test_later_rule_decides_when_earlier_does_not_match(tmp_path: Path) -> None:
    """A rule that does not match is skipped and the next one is tried."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: mr-only
            match: {sop_class: MRImageStorage}
            actions: [forward: pacs]
          - name: from-ct
            match: {calling_ae: CT_SCANNER_1}
            actions: [forward: ai]
        default: [store: archive]
        """,
    )
    assert rule_for(config, facts()) == "from-ct"


def test_default_decides_when_no_rule_matches(tmp_path: Path) -> None:
    """With no matching rule, `default` decides with its actions."""
    config = one_rule(tmp_path, "{sop_class: MRImageStorage}")
    decision = decided(config, facts(sop_class_uid=CTImageStorage))
    assert decision.rule == "default"
    assert decision.stores == ["archive"]


def test_empty_match_always_holds(tmp_path: Path) -> None:
    """A rule without `match` matches every instance."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: all
            actions: [forward: pacs]
        default: [store: archive]
        """,
    )
    assert rule_for(config, facts(sop_class_uid=UltrasoundImageStorage)) == "all"


# --- match keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "sop_class_uid", "matches"),
    [
        pytest.param("{sop_class: CTImageStorage}", CTImageStorage, True, id="keyword"),
        pytest.param("{sop_class: CTImageStorage}", MRImageStorage, False, id="keyword-miss"),
        pytest.param("{sop_class: '1.2.840.10008.5.1.4.1.1.2'}", CTImageStorage, True, id="uid"),
        pytest.param("{sop_class: cross_sectional}", MRImageStorage, True, id="group"),
        pytest.param("{sop_class: cross_sectional}", BasicTextSRStorage, False, id="group-miss"),
        pytest.param(
            "{sop_class: [BasicTextSRStorage, MRImageStorage]}", MRImageStorage, True, id="list"
        ),
        pytest.param(
            "{sop_class: DigitalXRayImagePresentationStorage}",
            "1.2.840.10008.5.1.4.1.1.1.1",
            True,
            id="seed-alias",
        ),
    ],
)
def test_sop_class_match(tmp_path: Path, match: str, sop_class_uid: str, matches: bool) -> None:
    """`sop_class` matches by keyword, UID, group name or any of a list."""
    config = one_rule(tmp_path, match)
    assert (rule_for(config, facts(sop_class_uid=sop_class_uid)) == "hit") is matches


@pytest.mark.parametrize(
    ("pattern", "calling_ae", "matches"),
    [
        pytest.param("CT_SCANNER_1", "CT_SCANNER_1", True, id="exact"),
        pytest.param("CT_SCANNER_1", "CT_SCANNER_2", False, id="exact-miss"),
        pytest.param("'CT*'", "CT_SCANNER_2", True, id="glob-star"),
        pytest.param("'CT_SCANNER_?'", "CT_SCANNER_7", True, id="glob-question"),
        pytest.param("'CT*'", "MR_1", False, id="glob-miss"),
        pytest.param("'ct*'", "CT_SCANNER_1", False, id="glob-case-sensitive"),
        pytest.param("ct_scanner_1", "CT_SCANNER_1", False, id="exact-case-sensitive"),
        pytest.param("[MR_1, CT_SCANNER_1]", "CT_SCANNER_1", True, id="list"),
    ],
)
def test_calling_ae_match(tmp_path: Path, pattern: str, calling_ae: str, matches: bool) -> None:
    """`calling_ae` matches exactly or by glob, case-sensitively."""
    config = one_rule(tmp_path, f"{{calling_ae: {pattern}}}")
    assert (rule_for(config, facts(calling_ae=calling_ae)) == "hit") is matches


@pytest.mark.parametrize(
    ("pattern", "called_ae", "matches"),
    [
        pytest.param("ROUTER", "ROUTER", True, id="exact"),
        pytest.param("ROUTER", "ROUTER_2", False, id="exact-miss"),
        pytest.param("'ROUTER*'", "ROUTER_2", True, id="glob"),
        pytest.param("router", "ROUTER", False, id="case-sensitive"),
    ],
)
def test_called_ae_match(tmp_path: Path, pattern: str, called_ae: str, matches: bool) -> None:
    """`called_ae` matches exactly or by glob, case-sensitively."""
    config = one_rule(tmp_path, f"{{called_ae: {pattern}}}")
    assert (rule_for(config, facts(called_ae=called_ae)) == "hit") is matches


@pytest.mark.parametrize(
    ("networks", "peer", "matches"),
    [
        pytest.param("10.1.2.3", "10.1.2.3", True, id="ip"),
        pytest.param("10.1.2.3", "10.1.2.4", False, id="ip-miss"),
        pytest.param("10.20.0.0/16", "10.20.99.1", True, id="cidr"),
        pytest.param("10.20.0.0/16", "10.21.0.1", False, id="cidr-miss"),
        pytest.param("[192.168.0.0/24, 10.20.0.0/16]", "10.20.0.7", True, id="list"),
        pytest.param("10.20.0.0/16", "::ffff:10.20.3.4", True, id="ipv4-mapped-ipv6"),
        pytest.param("'fd00::/8'", "fd00::1", True, id="ipv6-cidr"),
        pytest.param("10.20.0.0/16", "not-an-ip", False, id="unparsable-peer"),
    ],
)
def test_peer_match(tmp_path: Path, networks: str, peer: str, matches: bool) -> None:
    """`peer` matches IPs and CIDRs, IPv4-mapped IPv6 addresses included."""
    config = one_rule(tmp_path, f"{{peer: {networks}}}")
    assert (rule_for(config, facts(peer=peer)) == "hit") is matches


@pytest.mark.parametrize(
    ("match", "transfer_syntax", "matches"),
    [
        pytest.param("JPEGBaseline8Bit", JPEGBaseline8Bit, True, id="keyword"),
        pytest.param("'1.2.840.10008.1.2.4.50'", JPEGBaseline8Bit, True, id="uid"),
        pytest.param("JPEGBaseline8Bit", ExplicitVRLittleEndian, False, id="miss"),
        pytest.param(
            "[ImplicitVRLittleEndian, JPEGBaseline8Bit]", ImplicitVRLittleEndian, True, id="list"
        ),
    ],
)
def test_transfer_syntax_match(
    tmp_path: Path, match: str, transfer_syntax: str, matches: bool
) -> None:
    """`transfer_syntax` matches by keyword or UID."""
    config = one_rule(tmp_path, f"{{transfer_syntax: {match}}}")
    assert (rule_for(config, facts(transfer_syntax=transfer_syntax)) == "hit") is matches


@pytest.mark.parametrize(
    ("condition", "tags", "matches"),
    [
        pytest.param("ACME", {"Manufacturer": ("ACME",)}, True, id="value"),
        pytest.param("ACME", {"Manufacturer": ("ACME Medical",)}, False, id="value-is-exact"),
        pytest.param("[GE, ACME]", {"Manufacturer": ("ACME",)}, True, id="list"),
        pytest.param("[GE, Philips]", {"Manufacturer": ("ACME",)}, False, id="list-miss"),
        pytest.param("{glob: 'ACME*'}", {"Manufacturer": ("ACME Medical",)}, True, id="glob"),
        pytest.param(
            "{glob: 'acme*'}", {"Manufacturer": ("ACME Medical",)}, False, id="glob-case-sensitive"
        ),
        pytest.param("{regex: 'AC.E'}", {"Manufacturer": ("ACME",)}, True, id="regex"),
        pytest.param(
            "{regex: 'ACME'}",
            {"Manufacturer": ("ACME Medical",)},
            False,
            id="regex-is-anchored-at-end",
        ),
        pytest.param(
            "{regex: 'Medical'}",
            {"Manufacturer": ("ACME Medical",)},
            False,
            id="regex-is-anchored-at-start",
        ),
        pytest.param("{present: true}", {"Manufacturer": ("ACME",)}, True, id="present-true"),
        pytest.param("{present: true}", {}, False, id="present-true-missing"),
        pytest.param("{present: false}", {}, True, id="present-false-missing"),
        pytest.param(
            "{present: false}", {"Manufacturer": ("ACME",)}, False, id="present-false-present"
        ),
        pytest.param("ACME", {}, False, id="missing-value"),
        pytest.param("{glob: '*'}", {}, False, id="missing-glob"),
        pytest.param("{regex: '.*'}", {}, False, id="missing-regex"),
    ],
)
def test_tag_condition(
    tmp_path: Path, condition: str, tags: dict[str, tuple[str, ...]], matches: bool
) -> None:
    """`tags`: value, list, glob, anchored regex, present; a missing tag never matches."""
    config = one_rule(tmp_path, f"{{tags: {{Manufacturer: {condition}}}}}")
    assert (rule_for(config, facts(tags=tags)) == "hit") is matches


@pytest.mark.parametrize(
    ("condition", "matches"),
    [
        pytest.param("PRIMARY", True, id="value"),
        pytest.param("[LOCALIZER, AXIAL]", True, id="list"),
        pytest.param("{glob: 'AX*'}", True, id="glob"),
        pytest.param("{regex: 'PRIM.*'}", True, id="regex"),
        pytest.param("LOCALIZER", False, id="miss"),
    ],
)
def test_multi_valued_tag_matches_any_value(tmp_path: Path, condition: str, matches: bool) -> None:
    """A multi-valued element (VM > 1) matches when any one of its values does."""
    config = one_rule(tmp_path, f"{{tags: {{ImageType: {condition}}}}}")
    f = facts(tags={"ImageType": ("ORIGINAL", "PRIMARY", "AXIAL")})
    assert (rule_for(config, f) == "hit") is matches


def test_numeric_tag_value_in_yaml_matches_text(tmp_path: Path) -> None:
    """A YAML number in a tag condition is compared as DICOM text (SeriesNumber: 3 is '3')."""
    config = one_rule(tmp_path, "{tags: {SeriesNumber: 3}}")
    assert rule_for(config, facts(tags={"SeriesNumber": ("3",)})) == "hit"


def test_all_match_keys_are_anded(tmp_path: Path) -> None:
    """Every key of a match must hold: one failing key stops the rule."""
    config = one_rule(tmp_path, "{sop_class: CTImageStorage, calling_ae: CT_SCANNER_1}")
    assert rule_for(config, facts(calling_ae="CT_SCANNER_1")) == "hit"
    assert rule_for(config, facts(calling_ae="OTHER")) == "default"


@pytest.mark.parametrize(
    ("calling_ae", "rule"),
    [("CT_SCANNER_1", "hit"), ("TEST_SENDER", "default")],
)
def test_not_negates_nested_match(tmp_path: Path, calling_ae: str, rule: str) -> None:
    """`not` holds when its nested match does not."""
    config = one_rule(tmp_path, "{sop_class: CTImageStorage, not: {calling_ae: 'TEST*'}}")
    assert rule_for(config, facts(calling_ae=calling_ae)) == rule


def test_not_on_a_missing_tag_holds(tmp_path: Path) -> None:
    """`not: {tags: ...}` holds when the tag is missing (the inner match fails)."""
    config = one_rule(tmp_path, "{not: {tags: {Manufacturer: ACME}}}")
    assert rule_for(config, facts(tags={})) == "hit"


# --- when tags are needed ------------------------------------------------------------


def test_needs_tags_when_a_tags_rule_could_match(tmp_path: Path) -> None:
    """Without tags, a rule that could still match through `tags` returns NeedsTags."""
    config = one_rule(tmp_path, "{sop_class: CTImageStorage, tags: {Manufacturer: ACME}}")
    assert decide(config, facts()) == NeedsTags("hit")


def test_needs_tags_through_not(tmp_path: Path) -> None:
    """A `not` that reads tags also needs the header."""
    config = one_rule(tmp_path, "{not: {tags: {Manufacturer: ACME}}}")
    assert isinstance(decide(config, facts()), NeedsTags)


def test_earlier_rule_without_tags_decides_without_header(tmp_path: Path) -> None:
    """A rule before any tags rule that matches on its own decides without needing tags."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: ct
            match: {sop_class: CTImageStorage}
            actions: [forward: pacs]
          - name: acme
            match: {tags: {Manufacturer: ACME}}
            actions: [forward: ai]
        default: [store: archive]
        """,
    )
    assert rule_for(config, facts()) == "ct"


def test_tags_rule_whose_other_condition_fails_does_not_need_tags(tmp_path: Path) -> None:
    """A tags rule already ruled out by a non-tag condition is skipped without the header."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: mr-acme
            match: {sop_class: MRImageStorage, tags: {Manufacturer: ACME}}
            actions: [forward: ai]
        default: [store: archive]
        """,
    )
    assert rule_for(config, facts(sop_class_uid=CTImageStorage)) == "default"


def test_decides_once_tags_are_given(tmp_path: Path) -> None:
    """With the tags read, the same facts that needed tags get a decision."""
    config = one_rule(tmp_path, "{tags: {Manufacturer: ACME}}")
    assert isinstance(decide(config, facts()), NeedsTags)
    assert rule_for(config, facts(tags={"Manufacturer": ("ACME",)})) == "hit"


def test_wanted_tags_lists_every_tags_keyword(tmp_path: Path) -> None:
    """wanted_tags gives each keyword read by any rule's `tags`, nested `not` included."""
    config = config_from(
        tmp_path,
        """\
        rules:
          - name: a
            match: {tags: {Manufacturer: ACME, Modality: CT}}
            actions: [forward: pacs]
          - name: b
            match: {not: {tags: {StationName: {present: true}}}}
            actions: [forward: ai]
        default: [store: archive]
        """,
    )
    assert wanted_tags(config) == {"Manufacturer", "Modality", "StationName"}


def test_wanted_tags_empty_without_tags_rules(tmp_path: Path) -> None:
    """A config whose rules never read tags wants none."""
    config = one_rule(tmp_path, "{sop_class: CTImageStorage}")
    assert wanted_tags(config) == frozenset()


# --- statuses and reasons ------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "status"),
    [
        pytest.param("[store: archive]", 0x0000, id="store"),
        pytest.param("[forward: pacs]", 0x0000, id="forward"),
        pytest.param("[discard]", 0x0000, id="discard"),
        pytest.param("[reject: 0x0124]", 0x0124, id="reject"),
        pytest.param("[store: archive, warn: 0xB007]", 0xB007, id="warn"),
        pytest.param(
            "[modify: {remove: [private]}, store: archive]",
            0xB006,
            id="modify-remove-elements-discarded",
        ),
        pytest.param(
            "[modify: {remove: [PatientBirthDate]}, store: archive]",
            0xB006,
            id="modify-remove-keyword",
        ),
        pytest.param(
            "[modify: {set: {InstitutionName: X}}, store: archive]",
            0xB000,
            id="modify-set-coercion",
        ),
        pytest.param(
            "[modify: {remove: [private]}, store: archive, warn: 0xB000]",
            0xB000,
            id="warn-overrides-modify",
        ),
    ],
)
def test_planned_status(tmp_path: Path, actions: str, status: int) -> None:
    """The status an action list answers when every action succeeds (design §4, §5)."""
    config = config_from(tmp_path, f"default: {actions}\n")
    assert planned_status(config.default) == status
    assert decided(config, facts()).status == status


def test_decision_has_reasons_for_a_rule(tmp_path: Path) -> None:
    """A rule's decision explains why it matched."""
    config = one_rule(tmp_path, "{sop_class: CTImageStorage, calling_ae: CT_SCANNER_1}")
    reasons = decided(config, facts()).reasons
    assert reasons
    assert any("calling_ae" in r and "matches" in r for r in reasons)


def test_decision_has_reasons_for_default(tmp_path: Path) -> None:
    """A default decision says which rules were skipped and why."""
    config = one_rule(tmp_path, "{sop_class: MRImageStorage}")
    reasons = decided(config, facts()).reasons
    assert any("'hit'" in r and "does not match" in r for r in reasons)
    assert reasons[-1] == "no rule matched"


def test_decision_lists_forwards_and_stores(tmp_path: Path) -> None:
    """Decision.forwards and .stores name the destinations of the actions, in order."""
    config = config_from(
        tmp_path, "default: [store: archive, forward: pacs, forward: {to: ai, mode: sync}]\n"
    )
    decision = decided(config, facts())
    assert decision.stores == ["archive"]
    assert decision.forwards == ["pacs", "ai"]


def test_fixture_defaults_are_resolved_like_written_values(tmp_path: Path) -> None:
    """A fixture that leaves out sop_class and transfer_syntax gets CT and Explicit VR LE UIDs."""
    path = tmp_path / "router.yaml"
    path.write_text(
        HEAD
        + textwrap.dedent("""\
        rules:
          - name: ct
            match: {sop_class: CTImageStorage, transfer_syntax: ExplicitVRLittleEndian}
            actions: [forward: pacs]
        default: [store: archive]
        tests:
          - name: defaults
            instance: {}
            expect: {rule: ct}
        """),
        encoding="utf-8",
    )
    loaded = load(path)
    assert loaded.fixture_failures == []
    assert loaded.config.tests[0].instance.sop_class == CTImageStorage
