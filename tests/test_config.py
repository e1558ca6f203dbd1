"""Rule-file loading (design §4): every error located as FILE:LINE:COL with its key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.config.destinations import QueuedDestination
from router.errors import ConfigError, Located
from router.rules.ruleset import LoadedConfig, load

REPO = Path(__file__).resolve().parents[1]

# Five lines that most cases below extend; their own text starts on line 6.
HEAD = """\
version: 1
listen: {ae_title: ROUTER}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
  archive: {path: "archive/{PatientID}/{SOPInstanceUID}.dcm"}
"""

# The design's full example (§4), verbatim except for a relative spool.
DESIGN_EXAMPLE = """\
version: 1

listen:
  ae_title: DICOM_ROUTER      # required; 1-16 chars of the AE VR, no backslash or control chars
  host: 0.0.0.0               # default 0.0.0.0
  port: 11112                 # default 11112
  max_associations: 32        # default 32
  max_pdu: 262144             # default 262144; 0 = unlimited
  # tls: {certificate: ..., private_key: ..., ca_certificates: ..., require_client_certificate: true}

spool: spool                  # received instances and queues; relative paths resolve
                              # against the rule file's folder
spool_min_free: 2GiB          # below this free space new instances get 0xA700

callers:                      # optional. When present, only these may associate;
  - ae_title: CT_SCANNER_1    # anyone else gets an A-ASSOCIATE-RJ (calling AE not recognized)
    hosts: [10.1.2.3, 10.20.0.0/16]   # optional IP/CIDR restriction for that AE
  - ae_title: "MR*"           # glob patterns allowed

destinations:
  pacs:                       # a DICOM node
    ae_title: PACS
    host: 10.0.0.5
    port: 104
    calling_ae_title: DICOM_ROUTER   # default: listen.ae_title
    retry: {max_attempts: 10, initial_delay: 2s, max_delay: 5m}
    on_status:                # status policy for the destination's answers
      warning: delivered      # delivered | retry | dead_letter (default delivered)
      failure: retry          # default retry
      0x0124: dead_letter     # single codes and ranges ("0xA900-0xA9FF") override the classes
  archive:                    # a filesystem node
    path: "archive/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

sop_class_groups:             # optional named sets
  cross_sectional: [CTImageStorage, EnhancedCTImageStorage, MRImageStorage, "1.2.840.10008.5.1.4.1.1.128"]

rules:                        # evaluated in order; the first rule that matches decides
  - name: no-sr-from-ct
    match:
      sop_class: [BasicTextSRStorage, EnhancedSRStorage]
      calling_ae: CT_SCANNER_1
    actions:
      - reject: 0x0124
  - name: cross-sectional-to-pacs
    match:
      sop_class: cross_sectional
    actions:
      - store: archive
      - forward: pacs
  - name: dose-reports
    match:
      sop_class: XRayRadiationDoseSRStorage
      tags: {Manufacturer: {glob: "ACME*"}}
    actions:
      - modify: {remove: [private]}
      - forward: {to: pacs, mode: sync}
      - warn: 0xB007

default:                      # required: what happens when no rule matches
  - store: archive

tests:                        # optional fixtures: `check` runs them, and a reload whose
  - name: sr-from-ct-refused  # fixtures fail is refused like an invalid file
    instance: {sop_class: BasicTextSRStorage, calling_ae: CT_SCANNER_1, peer: 10.1.2.3}
    expect: {rule: no-sr-from-ct, status: 0x0124}
  - name: dose-report-warns
    instance: {sop_class: XRayRadiationDoseSRStorage, calling_ae: MR_1, tags: {Manufacturer: ACME Medical}}
    expect: {rule: dose-reports, status: 0xB007, forward: [pacs]}
"""  # noqa: E501 (verbatim from the design)


def load_text(tmp_path: Path, text: str, name: str = "router.yaml") -> LoadedConfig:
    """Write `text` as a rule file in tmp_path and load it."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load(path)


def problems_of(tmp_path: Path, text: str) -> list[Located]:
    """Load `text` expecting a ConfigError and return its problems."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value.problems


def assert_one_problem(
    tmp_path: Path, text: str, line_col: str, key_path: str, fragment: str
) -> None:
    """The file has exactly one problem, at LINE:COL, naming key_path and fragment."""
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert problem.file == str(tmp_path / "router.yaml")
    assert f"{problem.line}:{problem.column}" == line_col, str(problem)
    assert problem.message.startswith(f"{key_path}: "), str(problem)
    assert fragment in problem.message, str(problem)
    assert str(problem).startswith(f"{tmp_path / 'router.yaml'}:{line_col}: {key_path}: ")


# --- located errors ------------------------------------------------------------------

ERRORS = [
    pytest.param(
        "version: 1\nlisten:\n  ae_title: ROUTER\n  prot: 104\ndefault: [discard]\n",
        "4:3",
        "listen.prot",
        "unknown key 'prot'; did you mean 'port'?",
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        HEAD + "default:\n  - reject: 0xB007\n",
        "7:13",
        "default.1.reject",
        "0xB007 is not a C-STORE failure status",
        id="reject-warning-code",
    ),
    pytest.param(
        HEAD + "default:\n  - store: archive\n  - warn: 0x0124\n",
        "8:11",
        "default.2.warn",
        "0x0124 is not a C-STORE warning status",
        id="warn-failure-code",
    ),
    pytest.param(
        HEAD + "default:\n  - warn: B007\n",
        "7:11",
        "default.1.warn",
        "write it in hex",
        id="status-not-hex",
    ),
    pytest.param(
        HEAD + "rules:\n  - name: r\n    match:\n      sop_class: CTImageStorag\n"
        "    actions: [discard]\ndefault: [discard]\n",
        "9:18",
        "rules.1.match.sop_class",
        "unknown SOP class or group 'CTImageStorag'; did you mean 'CTImageStorage'",
        id="unknown-sop-class",
    ),
    pytest.param(
        HEAD + "sop_class_groups:\n  cross_sectional: [CTImageStorage, MRImageStorage]\n"
        "rules:\n  - name: r\n    match:\n      sop_class: cross_sectionl\n"
        "    actions: [discard]\ndefault: [discard]\n",
        "11:18",
        "rules.1.match.sop_class",
        "'cross_sectionl'; did you mean 'cross_sectional'?",
        id="unknown-group",
    ),
    pytest.param(
        HEAD + "sop_class_groups:\n  cross_sectional: [CTImageStorage, MRImageStorag]\n"
        "default: [discard]\n",
        "7:37",
        "sop_class_groups.cross_sectional.2",
        "unknown SOP class 'MRImageStorag'; did you mean 'MRImageStorage'",
        id="unknown-group-member",
    ),
    pytest.param(
        HEAD + "default:\n  - store: archiv\n",
        "7:12",
        "default.1.store",
        "no filesystem destination named 'archiv'; did you mean 'archive'?",
        id="unknown-store-destination",
    ),
    pytest.param(
        HEAD + "default:\n  - forward: pac\n",
        "7:14",
        "default.1.forward",
        "no DICOM destination named 'pac'; did you mean 'pacs'?",
        id="unknown-forward-destination",
    ),
    pytest.param(
        HEAD + "default:\n  - store: pacs\n",
        "7:12",
        "default.1.store",
        "no filesystem destination named 'pacs'",
        id="store-to-dicom-destination",
    ),
    pytest.param(
        HEAD + "default:\n  - forward: archive\n",
        "7:14",
        "default.1.forward",
        "no DICOM destination named 'archive'",
        id="forward-to-filesystem-destination",
    ),
    pytest.param(
        HEAD + "rules:\n  - name: r\n    match:\n      tags:\n        Manufactrer: ACME\n"
        "    actions: [discard]\ndefault: [discard]\n",
        "10:9",
        "rules.1.match.tags.Manufactrer",
        "unknown DICOM keyword 'Manufactrer'; did you mean 'Manufacturer'",
        id="unknown-tag-keyword-at-key",
    ),
    pytest.param(
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n  archive:\n"
        '    path: "archive/{PatientId}/{SOPInstanceUID}.dcm"\ndefault: [discard]\n',
        "5:11",
        "destinations.archive.path",
        "unknown DICOM keyword 'PatientId'; did you mean 'PatientID'",
        id="template-unknown-keyword",
    ),
    pytest.param(
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n  archive:\n"
        '    path: "archive/{PatientID!r}.dcm"\ndefault: [discard]\n',
        "5:11",
        "destinations.archive.path",
        "no format spec or conversion",
        id="template-conversion",
    ),
    pytest.param(
        "version: 1\nlisten:\n  ae_title: ABCDEFGHIJKLMNOPQ\ndefault: [discard]\n",
        "3:13",
        "listen.ae_title",
        "longer than 16 characters",
        id="ae-title-too-long",
    ),
    pytest.param(
        "version: 1\nlisten:\n  ae_title: 'AB\\C'\ndefault: [discard]\n",
        "3:13",
        "listen.ae_title",
        "backslash",
        id="ae-title-backslash",
    ),
    pytest.param(
        'version: 1\nlisten:\n  ae_title: "AB\\tC"\ndefault: [discard]\n',
        "3:13",
        "listen.ae_title",
        "control",
        id="ae-title-control-char",
    ),
    pytest.param(
        "version: 1\nlisten:\n  ae_title: ROUTER\n  port: 70000\ndefault: [discard]\n",
        "4:9",
        "listen.port",
        "less than or equal to 65535",
        id="port-too-high",
    ),
    pytest.param(
        "version: 1\nlisten:\n  ae_title: ROUTER\n  port: 0\ndefault: [discard]\n",
        "4:9",
        "listen.port",
        "greater than or equal to 1",
        id="port-zero",
    ),
    pytest.param(
        HEAD,
        "1:1",
        "(top)",
        "missing required key 'default'",
        id="missing-default",
    ),
    pytest.param(
        "version: 1\nlisten:\n  port: 104\ndefault: [discard]\n",
        "3:3",
        "listen",
        "missing required key 'ae_title'",
        id="missing-listen-ae-title",
    ),
    pytest.param(
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n  pacs:\n    ae_title: PACS\n"
        "    host: 10.0.0.5\n    port: 104\n    retry:\n      initial_delay: 2 sec\n"
        "default: [discard]\n",
        "9:22",
        "destinations.pacs.retry.initial_delay",
        "'2 sec' is not a duration",
        id="bad-duration",
    ),
    pytest.param(
        "version: 1\nlisten: {ae_title: ROUTER}\nspool_min_free: 2 GB!\ndefault: [discard]\n",
        "3:17",
        "spool_min_free",
        "'2 GB!' is not a size",
        id="bad-size",
    ),
    pytest.param(
        HEAD + "default:\n  - store: archive\n  - reject: 0x0124\n",
        "7:3",
        "default",
        "reject keeps nothing",
        id="reject-with-other-action",
    ),
    pytest.param(
        HEAD + "rules:\n  - name: r\n    actions:\n      - reject: 0x0124\n      - warn: 0xB007\n"
        "default: [discard]\n",
        "9:7",
        "rules.1.actions",
        "reject keeps nothing",
        id="reject-with-other-action-in-rule",
    ),
    pytest.param(
        HEAD + "default:\n  - stor: archive\n",
        "7:5",
        "default.1",
        "unknown action 'stor'; did you mean 'store'?",
        id="unknown-action",
    ),
    pytest.param(
        "version: 2\nlisten: {ae_title: ROUTER}\ndefault: [discard]\n",
        "1:10",
        "version",
        "expected 1",
        id="wrong-version",
    ),
]


@pytest.mark.parametrize(("text", "line_col", "key_path", "fragment"), ERRORS)
def test_error_is_located_with_key_path_and_message(
    tmp_path: Path, text: str, line_col: str, key_path: str, fragment: str
) -> None:
    """Each invalid rule file gives one FILE:LINE:COL error naming the key path and problem."""
    assert_one_problem(tmp_path, text, line_col, key_path, fragment)


def test_octal_reject_code_is_caught_with_hex_and_octal_hint(tmp_path: Path) -> None:
    """`reject: 0124` (YAML octal 84) is refused, shown in hex, with the octal reading explained."""
    text = HEAD + "default:\n  - reject: 0124\n"
    fragment = "0x0054 is not a C-STORE failure"
    assert_one_problem(tmp_path, text, "7:13", "default.1.reject", fragment)
    (problem,) = problems_of(tmp_path, text)
    assert "octal number 84" in problem.message
    assert "write 0x0124" in problem.message


def test_duplicate_key_points_at_second_and_names_first(tmp_path: Path) -> None:
    """A duplicate key is an error at its 2nd occurrence, with the key path and the first line."""
    text = "version: 1\nlisten:\n  ae_title: ROUTER\n  port: 104\n  port: 105\ndefault: [discard]\n"
    fragment = "duplicate key 'port' (first at line 4)"
    assert_one_problem(tmp_path, text, "5:3", "listen.port", fragment)


def test_invalid_uid_in_sop_class_is_located(tmp_path: Path) -> None:
    """A malformed UID (leading zero component) in `sop_class` is a located error."""
    text = HEAD + (
        "rules:\n  - name: r\n    match:\n      sop_class: '1.2.03'\n"
        "    actions: [discard]\ndefault: [discard]\n"
    )
    assert_one_problem(tmp_path, text, "9:18", "rules.1.match.sop_class", "not a valid UID")


ON_STATUS_HEAD = (
    "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n  pacs:\n"
    "    ae_title: PACS\n    host: 10.0.0.5\n    port: 104\n    on_status:\n"
)


def test_on_status_codes_and_ranges_are_accepted(tmp_path: Path) -> None:
    """on_status takes classes, hex codes and hex ranges (design §4 destinations)."""
    loaded = load_text(
        tmp_path,
        ON_STATUS_HEAD + "      warning: retry\n      0x0124: dead_letter\n"
        '      "0xA900-0xA9FF": retry\ndefault: [discard]\n',
    )
    assert loaded.config.destinations["pacs"].on_status == {
        "warning": "retry",
        "0x0124": "dead_letter",
        "0xA900-0xA9FF": "retry",
    }


def test_on_status_octal_key_is_caught(tmp_path: Path) -> None:
    """An on_status key `0124` (YAML octal 84) is refused like `reject: 0124`, not taken as 0x54."""
    problems = problems_of(
        tmp_path, ON_STATUS_HEAD + "      0124: dead_letter\ndefault: [discard]\n"
    )
    assert [(p.line, p.column) for p in problems] == [(9, 7)]
    assert "destinations.pacs.on_status" in problems[0].message
    assert "octal" in problems[0].message


def test_on_status_bad_key_is_located_at_that_key(tmp_path: Path) -> None:
    """A bad on_status key is reported at its own line, not at the mapping's first key."""
    problems = problems_of(
        tmp_path,
        ON_STATUS_HEAD + "      warning: retry\n      0xZZ: retry\ndefault: [discard]\n",
    )
    assert [(p.line, p.column) for p in problems] == [(10, 7)]
    assert "destinations.pacs.on_status" in problems[0].message
    assert "'0xZZ'" in problems[0].message


def test_yaml_syntax_error_reported_with_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error becomes one FILE:LINE:COL problem at the offending character."""
    problems = problems_of(tmp_path, "version: 1\nlisten:\n  ae_title: ROUTER: X\n")
    assert [(p.line, p.column) for p in problems] == [(3, 19)]
    assert "mapping values are not allowed" in problems[0].message


def test_every_error_in_a_file_is_reported(tmp_path: Path) -> None:
    """Several problems in one file are all reported at once, in line order."""
    text = (
        "version: 1\n"
        "listen:\n"
        "  ae_title: ROUTER\n"
        "  prot: 104\n"  # unknown key
        "destinations:\n"
        "  archive: {path: 'a/{PatientID}.dcm'}\n"
        "rules:\n"
        "  - name: r\n"
        "    match: {sop_class: CTImageStorag}\n"  # unknown SOP class
        "    actions: [discard]\n"
        "default:\n"
        "  - store: archiv\n"  # unknown destination
    )
    problems = problems_of(tmp_path, text)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (4, "listen.prot"),
        (9, "rules.1.match.sop_class"),
        (12, "default.1.store"),
    ]


def test_empty_file_is_refused(tmp_path: Path) -> None:
    """An empty rule file is one problem at 1:1 asking for a mapping."""
    problems = problems_of(tmp_path, "")
    assert [(p.line, p.column) for p in problems] == [(1, 1)]
    assert "mapping" in problems[0].message


# --- accepted values -----------------------------------------------------------------


def test_warn_elements_discarded_is_accepted(tmp_path: Path) -> None:
    """`warn: 0xB006` is a valid warning status."""
    loaded = load_text(tmp_path, HEAD + "default:\n  - store: archive\n  - warn: 0xB006\n")
    assert loaded.config.default[1].warn == 0xB006


def test_status_written_as_string_is_accepted(tmp_path: Path) -> None:
    """A quoted hex status such as "0xA700" is read as that code."""
    loaded = load_text(tmp_path, HEAD + 'default:\n  - reject: "0xA700"\n')
    assert loaded.config.default[0].reject == 0xA700


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1.5", 1.5)],
)
def test_duration_strings_are_parsed(tmp_path: Path, text: str, seconds: float) -> None:
    """Durations accept ms, s, m and h suffixes (a bare number is seconds)."""
    loaded = load_text(
        tmp_path,
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        f"  pacs: {{ae_title: PACS, host: h, port: 104, idle_timeout: {text}}}\n"
        "default: [discard]\n",
    )
    assert loaded.config.destinations["pacs"].idle_timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 * 1024**3), ("500MiB", 500 * 1024**2), ("1GB", 10**9), ("1024", 1024)],
)
def test_size_strings_are_parsed(tmp_path: Path, text: str, size: int) -> None:
    """Sizes accept binary (GiB) and decimal (GB) units; a bare number is bytes."""
    loaded = load_text(
        tmp_path,
        f"version: 1\nlisten: {{ae_title: ROUTER}}\nspool_min_free: {text}\ndefault: [discard]\n",
    )
    assert loaded.config.spool_min_free == size


# --- paths and version -----------------------------------------------------------------


def test_relative_spool_resolves_against_rule_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative `spool` resolves against the rule file's folder, not the current folder."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "router.yaml").write_text(
        "version: 1\nlisten: {ae_title: ROUTER}\nspool: data/spool\ndefault: [discard]\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load(Path("../etc/router.yaml"))
    assert loaded.spool == (tmp_path / "etc" / "data" / "spool").resolve()


def test_absolute_spool_is_kept(tmp_path: Path) -> None:
    """An absolute `spool` is used as written."""
    loaded = load_text(
        tmp_path / "etc",
        f"version: 1\nlisten: {{ae_title: ROUTER}}\nspool: {tmp_path}/abs\ndefault: [discard]\n",
    )
    assert loaded.spool == tmp_path / "abs"


def test_relative_destination_path_resolves_against_rule_file_folder(tmp_path: Path) -> None:
    """A filesystem destination's relative template resolves against the rule file's folder."""
    loaded = load_text(tmp_path / "etc", HEAD + "default: [store: archive]\n")
    template = loaded.config.destinations["archive"].path
    resolved = loaded.resolve(template)
    assert resolved == (tmp_path / "etc").resolve() / "archive/{PatientID}/{SOPInstanceUID}.dcm"
    assert loaded.base_dir == (tmp_path / "etc").resolve()


def test_config_version_is_stable_for_same_text(tmp_path: Path) -> None:
    """Loading the same text twice gives the same config version."""
    text = HEAD + "default: [store: archive]\n"
    first = load_text(tmp_path, text, "a.yaml")
    second = load_text(tmp_path, text, "b.yaml")
    assert first.version == second.version
    assert first.version


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.replace("store: archive", "discard"), id="rule-change"),
        pytest.param(lambda t: t + "# a comment\n", id="comment-only"),
    ],
)
def test_config_version_changes_when_text_changes(tmp_path: Path, edit: object) -> None:
    """The config version is a hash of the text: any edit, even a comment, changes it."""
    text = HEAD + "default: [store: archive]\n"
    before = load_text(tmp_path, text, "a.yaml")
    after = load_text(tmp_path, edit(text), "b.yaml")  # type: ignore[operator]
    assert before.version != after.version


# --- complete files --------------------------------------------------------------------


def test_design_example_loads(tmp_path: Path) -> None:
    """The full example rule file of design §4 loads without warnings."""
    loaded = load_text(tmp_path, DESIGN_EXAMPLE)
    assert loaded.warnings == []
    assert [r.name for r in loaded.config.rules] == [
        "no-sr-from-ct",
        "cross-sectional-to-pacs",
        "dose-reports",
    ]
    assert loaded.spool == tmp_path.resolve() / "spool"
    assert loaded.config.spool_min_free == 2 * 1024**3


def test_design_example_fixtures_pass(tmp_path: Path) -> None:
    """Both fixtures of the design's example rule file pass."""
    loaded = load_text(tmp_path, DESIGN_EXAMPLE)
    assert [(f.name, f.passed) for f in loaded.fixtures] == [
        ("sr-from-ct-refused", True),
        ("dose-report-warns", True),
    ]
    assert loaded.fixture_failures == []


EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES or [None], ids=lambda p: p.name if p else "none")
def test_shipped_example_loads_and_its_fixtures_pass(path: Path | None) -> None:
    """Every config/examples/*.yaml loads and its fixtures pass."""
    if path is None:
        pytest.skip("config/examples/ holds no rule files yet")
    loaded = load(path)
    assert loaded.fixture_failures == []


def test_embedded_default_rule_file_loads() -> None:
    """config/router.yaml (the embedded default) loads and stores everything by default."""
    loaded = load(REPO / "config" / "router.yaml")
    assert loaded.config.listen.ae_title == "DICOM_ROUTER"
    assert loaded.config.listen.port == 11112
    assert loaded.fixture_failures == []


# --- retry bounds ----------------------------------------------------------------------

RETRY = (
    "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
    "  pacs:\n    ae_title: PACS\n    host: h\n    port: 104\n    retry:\n"
)


@pytest.mark.parametrize(
    ("retry", "line_col", "key_path", "fragment"),
    [
        pytest.param(
            "      max_attempts: 5000\n",
            "9:21",
            "destinations.pacs.retry.max_attempts",
            "max_attempts is 5000, more than 1000: write at most 1000",
            id="too-many-attempts",
        ),
        pytest.param(
            "      max_attempts: 0\n",
            "9:21",
            "destinations.pacs.retry.max_attempts",
            "max_attempts is 0: write at least 1",
            id="no-attempt",
        ),
        pytest.param(
            "      max_delay: 2d\n",
            "9:18",
            "destinations.pacs.retry.max_delay",
            "max_delay is 172800 s, more than a day: write at most 1d",
            id="max-delay-over-a-day",
        ),
        pytest.param(
            "      initial_delay: 10m\n      max_delay: 5m\n",
            "9:7",
            "destinations.pacs.retry",
            "initial_delay (600 s) is longer than max_delay (300 s): lower initial_delay or "
            "raise max_delay",
            id="initial-delay-over-max-delay",
        ),
    ],
)
def test_retry_out_of_bounds_is_located(
    tmp_path: Path, retry: str, line_col: str, key_path: str, fragment: str
) -> None:
    """Retry bounds: 1-1000 attempts, max_delay at most a day, initial_delay <= max_delay."""
    assert_one_problem(
        tmp_path, RETRY + retry + "default: [discard]\n", line_col, key_path, fragment
    )


def test_retry_at_its_bounds_is_accepted(tmp_path: Path) -> None:
    """1000 attempts, a max_delay of exactly a day and an initial_delay equal to it load."""
    retry = "      max_attempts: 1000\n      initial_delay: 1d\n      max_delay: 24h\n"
    loaded = load_text(tmp_path, RETRY + retry + "default: [discard]\n")
    got = loaded.config.destinations["pacs"].retry
    assert (got.max_attempts, got.initial_delay, got.max_delay) == (1000, 86400.0, 86400.0)


def test_a_max_delay_below_the_default_first_delay_lowers_it(tmp_path: Path) -> None:
    """A rule file that sets only a short max_delay loads: the first delay follows it."""
    loaded = load_text(tmp_path, RETRY + "      max_delay: 500ms\n" + "default: [discard]\n")
    got = loaded.config.destinations["pacs"].retry
    assert (got.initial_delay, got.max_delay) == (0.5, 0.5)


def test_retry_on_a_stow_destination_is_bounded_too(tmp_path: Path) -> None:
    """A STOW-RS service's retry has the same bounds as a DICOM node's."""
    text = (
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        "  ai: {url: 'http://127.0.0.1:8042/dicom-web', retry: {max_attempts: 1001}}\n"
        "default: [discard]\n"
    )
    assert_one_problem(
        tmp_path, text, "4:70", "destinations.ai.retry.max_attempts", "more than 1000"
    )


# --- queued destinations ----------------------------------------------------------------


def test_parallel_is_associations_for_a_dicom_node(tmp_path: Path) -> None:
    """A DICOM node's deliveries run over `associations` associations at once."""
    text = (
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        "  pacs: {ae_title: PACS, host: h, port: 104, associations: 3}\n"
        "default: [discard]\n"
    )
    dest = load_text(tmp_path, text).config.destinations["pacs"]
    assert isinstance(dest, QueuedDestination)
    assert dest.parallel == 3


def test_parallel_is_connections_for_a_stow_service(tmp_path: Path) -> None:
    """A STOW-RS service's deliveries run over `connections` requests at once."""
    text = (
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        "  ai: {url: 'http://127.0.0.1:8042/dicom-web', connections: 4}\n"
        "default: [discard]\n"
    )
    dest = load_text(tmp_path, text).config.destinations["ai"]
    assert isinstance(dest, QueuedDestination)
    assert dest.parallel == 4


# --- messages built from the status tables, cautions --------------------------------------


def test_reject_outside_the_failures_lists_them(tmp_path: Path) -> None:
    """A reject with a non-failure status names every failure code and range a reject may use."""
    assert_one_problem(
        tmp_path,
        HEAD + "default:\n  - reject: 0x0001\n",
        "7:13",
        "default.1.reject",
        "0x0001 is not a C-STORE failure status (use 0x0112, 0x0117, 0x0122, 0x0124, "
        "0x0210-0x0212, 0xA700-0xA7FF, 0xA900-0xA9FF or 0xC000-0xCFFF)",
    )


def test_warn_outside_the_warnings_lists_them(tmp_path: Path) -> None:
    """A warn with another status names the three C-STORE warnings."""
    assert_one_problem(
        tmp_path,
        HEAD + "default:\n  - warn: 0xB001\n",
        "7:11",
        "default.1.warn",
        "0xB001 is not a C-STORE warning status (use 0xB000, 0xB006 or 0xB007)",
    )


def test_template_without_a_field_is_a_located_warning(tmp_path: Path) -> None:
    """A filesystem destination whose path has no {Keyword} loads, with a warning at the path."""
    text = (
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        "  archive: {path: archive/one.dcm}\n"
        "default: [{store: archive}]\n"
    )
    loaded = load_text(tmp_path, text)
    assert [(w.line, w.column, w.message) for w in loaded.warnings] == [
        (
            4,
            19,
            "destinations.archive.path: no {Keyword} in the template: every instance goes "
            "to the same file",
        )
    ]


def test_unverified_destination_tls_is_a_located_warning(tmp_path: Path) -> None:
    """`tls: {verify: false}` on a DICOM node loads, with a warning at `verify`."""
    text = (
        "version: 1\nlisten: {ae_title: ROUTER}\ndestinations:\n"
        "  pacs: {ae_title: PACS, host: h, port: 104, tls: {verify: false}}\n"
        "default: [{forward: pacs}]\n"
    )
    (warning,) = load_text(tmp_path, text).warnings
    assert (warning.line, warning.column) == (4, 60)
    assert warning.message.startswith("destinations.pacs.tls.verify: false: the destination's")


# --- storage commitment: relayed ------------------------------------------------------------

RELAYED = (
    "version: 1\nlisten: {ae_title: ROUTER}\nstorage_commitment: {answer: relayed}\ndestinations:\n"
)


@pytest.mark.parametrize(
    "dest",
    [
        "{url: 'http://127.0.0.1:8042/dicom-web', commitment: true}",
        "{webhook: {url: 'http://127.0.0.1:9/h'}, commitment: true}",
        "{path: 'out/{SOPInstanceUID}.dcm', commitment: true}",
    ],
)
def test_commitment_on_a_destination_that_is_not_dicom_is_refused(
    tmp_path: Path, dest: str
) -> None:
    """commitment: true on a STOW-RS service, webhook or folder: one error saying why."""
    text = (
        RELAYED
        + f"  pacs: {{ae_title: P, host: h, port: 1}}\n  other: {dest}\ndefault: [discard]\n"
    )
    (problem,) = problems_of(tmp_path, text)
    assert problem.message.startswith("destinations.other")
    assert ": commitment: true is for DICOM destinations" in problem.message


def test_relayed_with_a_commitment_destination_loads_without_warning(tmp_path: Path) -> None:
    """answer: relayed and a DICOM destination with commitment: true: accepted as it is."""
    text = (
        RELAYED
        + "  pacs: {ae_title: P, host: h, port: 1, commitment: true}\ndefault: [forward: pacs]\n"
    )
    loaded = load_text(tmp_path, text)
    assert loaded.config.storage_commitment is not None
    assert loaded.config.storage_commitment.answer == "relayed"
    assert loaded.warnings == []


def test_relayed_without_a_commitment_destination_warns(tmp_path: Path) -> None:
    """answer: relayed with no destination to ask: a warning at the answer key."""
    text = RELAYED + "  pacs: {ae_title: P, host: h, port: 1}\ndefault: [forward: pacs]\n"
    (warning,) = load_text(tmp_path, text).warnings
    assert (warning.line, warning.column) == (3, 30)
    assert "no destination has commitment: true" in warning.message


def test_a_deidentified_copy_to_a_commitment_destination_warns(tmp_path: Path) -> None:
    """relayed, and a forward after deidentify to a commitment: true destination: a warning
    at that forward (the destination holds other UIDs than the modality asks about)."""
    key = tmp_path / "deid.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    text = (
        RELAYED
        + "  pacs: {ae_title: P, host: h, port: 1, commitment: true}\n"
        + f"deidentify:\n  research: {{profile: basic, key_file: {key}}}\n"
        + "default: [forward: pacs, deidentify: research, forward: pacs]\n"
    )
    (warning,) = load_text(tmp_path, text).warnings
    assert (warning.line, warning.column) == (8, 48)  # the second forward: pacs
    assert warning.message.startswith("default.3: a de-identified copy goes to pacs")
