"""The command line (design §3): check, explain and schema, called in-process via main()."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    MRImageStorage,
    XRayRadiationDoseSRStorage,
)

from router.cli import main
from tests.dicomgen import make_ct, make_instance

RULES = """\
version: 1
listen: {ae_title: ROUTER}
spool: spool
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
  archive: {path: "archive/{PatientID}/{SOPInstanceUID}.dcm"}
rules:
  - name: no-sr-from-ct
    match:
      sop_class: [BasicTextSRStorage, EnhancedSRStorage]
      calling_ae: CT_SCANNER_1
    actions:
      - reject: 0x0124
  - name: ct-scanner-to-pacs
    match:
      calling_ae: 'CT_SCANNER_*'
    actions:
      - store: archive
      - forward: pacs
  - name: acme-dose
    match:
      sop_class: XRayRadiationDoseSRStorage
      tags: {Manufacturer: {glob: "ACME*"}}
    actions:
      - forward: pacs
      - warn: 0xB007
default:
  - store: archive
tests:
  - name: sr-from-ct-refused
    instance: {sop_class: BasicTextSRStorage, calling_ae: CT_SCANNER_1}
    expect: {rule: no-sr-from-ct, status: 0x0124}
"""

LOCATED = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


def write(path: Path, text: str) -> Path:
    """Write dedented text to path and return it."""
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A valid rule file with three rules and one passing fixture."""
    return write(tmp_path / "router.yaml", RULES)


def explain(capsys: pytest.CaptureFixture[str], rules: Path, *args: str) -> tuple[int, str]:
    """Run `explain` and return its exit code and stdout."""
    code = main(["explain", str(rules), *args])
    return code, capsys.readouterr().out


def field(output: str, name: str) -> list[str]:
    """The values of one `explain` output field (`rule`, `why`, `actions`, `status`)."""
    return [line.split(None, 1)[1] for line in output.splitlines() if line.split()[:1] == [name]]


# --- check ---------------------------------------------------------------------------


def test_check_valid_file_exits_0(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on a valid rule file exits 0 and writes nothing to stderr."""
    assert main(["check", str(rules)]) == 0
    assert capsys.readouterr().err == ""


def test_check_prints_listeners_destinations_and_rules(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` prints a table of the listener, destinations, rules in order, and default."""
    main(["check", str(rules)])
    out = capsys.readouterr().out
    assert "syntax ok" in out
    assert "ROUTER" in out and "11112" in out
    assert "pacs" in out and "archive" in out
    positions = [
        out.index(name) for name in ("no-sr-from-ct", "ct-scanner-to-pacs", "acme-dose", "default")
    ]
    assert positions == sorted(positions)


def test_check_reports_fixture_results(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` runs the fixtures and shows each one's result."""
    main(["check", str(rules)])
    out = capsys.readouterr().out
    assert re.search(r"fixture ok\s+sr-from-ct-refused", out)


def test_check_invalid_file_exits_1_with_located_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid file exits 1 with every error on stderr as one FILE:LINE:COL line."""
    path = write(
        tmp_path / "bad.yaml",
        """\
        version: 1
        listen:
          ae_title: ROUTER
          prot: 104
        default:
          - stor: archive
        """,
    )
    assert main(["check", str(path)]) == 1
    err_lines = capsys.readouterr().err.splitlines()
    located = [LOCATED.match(line) for line in err_lines]
    assert all(located), err_lines
    assert [(m["file"], m["line"], m["col"]) for m in located if m] == [
        (str(path), "4", "3"),
        (str(path), "6", "5"),
    ]


def test_check_invalid_file_prints_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Errors are plain lines, never a Python traceback."""
    path = write(tmp_path / "bad.yaml", "version: 1\nlisten: {ae_title: ROUTER}\n")
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_check_missing_file_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing rule file exits 1 with a single line naming the file."""
    missing = tmp_path / "nope.yaml"
    assert main(["check", str(missing)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert str(missing) in err


def test_check_failing_fixture_exits_1_showing_expected_and_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixture that fails makes `check` exit 1 and shows what was expected and what came."""
    text = RULES.replace(
        "expect: {rule: no-sr-from-ct, status: 0x0124}",
        "expect: {rule: default, status: 0x0000}",
    )
    path = write(tmp_path / "router.yaml", text)
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    (line,) = captured.err.splitlines()
    m = LOCATED.match(line)
    assert m, line
    assert m["file"] == str(path)
    assert "sr-from-ct-refused" in m["message"]
    assert "expected default got no-sr-from-ct" in m["message"]
    assert "expected 0x0000 got 0x0124" in m["message"]


# --- schema --------------------------------------------------------------------------


def test_schema_prints_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`schema` exits 0 and prints a JSON Schema whose properties include listen and rules."""
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"listen", "rules", "default", "destinations"} <= set(schema["properties"])
    assert "listen" in schema["required"]


# --- explain -------------------------------------------------------------------------


def test_explain_calling_ae_rule(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CT from CT_SCANNER_7 is matched by the calling_ae glob rule, with why and actions."""
    ct = tmp_path / "ct.dcm"
    make_ct(ct, size=4096)
    code, out = explain(capsys, rules, str(ct), "--calling-ae", "CT_SCANNER_7")
    assert code == 0
    assert field(out, "rule") == ["ct-scanner-to-pacs"]
    assert any("calling_ae CT_SCANNER_7 matches" in why for why in field(out, "why"))
    assert field(out, "actions") == ["store:archive, forward:pacs"]
    assert field(out, "status") == ["0x0000"]


def test_explain_rejected_sr_shows_its_status(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SR from CT_SCANNER_1 shows the reject rule and status 0x0124."""
    sr = tmp_path / "sr.dcm"
    make_instance(sr, BasicTextSRStorage)
    _, out = explain(capsys, rules, str(sr), "--calling-ae", "CT_SCANNER_1")
    assert field(out, "rule") == ["no-sr-from-ct"]
    assert field(out, "actions") == ["reject:0x0124"]
    assert field(out, "status") == ["0x0124"]


@pytest.mark.parametrize(
    ("manufacturer", "rule", "status"),
    [("ACME Medical", "acme-dose", "0xB007"), ("Other Corp", "default", "0x0000")],
)
def test_explain_tags_rule(
    tmp_path: Path,
    rules: Path,
    capsys: pytest.CaptureFixture[str],
    manufacturer: str,
    rule: str,
    status: str,
) -> None:
    """A dose SR is routed by its Manufacturer tag, read from the file's header."""
    dose = tmp_path / "dose.dcm"
    make_instance(dose, XRayRadiationDoseSRStorage, Manufacturer=manufacturer)
    _, out = explain(capsys, rules, str(dose))
    assert field(out, "rule") == [rule]
    assert field(out, "status") == [status]
    assert any(f"tags.Manufacturer {manufacturer}" in why for why in field(out, "why"))


def test_explain_several_files(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each file given gets its own decision, in order."""
    sr, mr = tmp_path / "sr.dcm", tmp_path / "mr.dcm"
    make_instance(sr, BasicTextSRStorage)
    make_instance(mr, MRImageStorage)
    _, out = explain(capsys, rules, str(sr), str(mr), "--calling-ae", "CT_SCANNER_1")
    assert field(out, "rule") == ["no-sr-from-ct", "ct-scanner-to-pacs"]


def test_explain_sop_class_mismatch_is_0xa900(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose dataset SOP Class UID differs from its file meta's shows status 0xA900."""
    path = tmp_path / "mismatch.dcm"
    make_instance(path, BasicTextSRStorage)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # what the "C-STORE" announces
    ds.save_as(path, enforce_file_format=False)
    assert dcmread(path).file_meta.MediaStorageSOPClassUID != dcmread(path).SOPClassUID
    _, out = explain(capsys, rules, str(path))
    (status,) = field(out, "status")
    assert status.startswith("0xA900")


def test_explain_touches_nothing(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`explain` is a dry run: no spool, archive or other file appears."""
    ct = tmp_path / "ct.dcm"
    make_ct(ct, size=4096)
    before = sorted(tmp_path.rglob("*"))
    explain(capsys, rules, str(ct), "--calling-ae", "CT_SCANNER_7")
    assert sorted(tmp_path.rglob("*")) == before


def test_explain_non_dicom_file_exits_1(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not DICOM is one clear line on stderr (not pydicom's advice); exit 1."""
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    assert main(["explain", str(rules), str(junk)]) == 1
    err = capsys.readouterr().err
    assert err == f"{junk}: not a DICOM file (no 'DICM' after the 128-byte preamble)\n"


def test_version_says_what_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """`dicom-router --version` prints the installed version and exits 0."""
    from router import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dicom-router {__version__}"
