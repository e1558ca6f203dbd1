"""`explain` and `check` on a rule file with a deidentify profile: the attributes the
profile changes, before -> after, and the profile's options and table edition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from router.cli import main
from tests.dicomgen import make_instance
from tests.test_cli import explain, write


def _rules(tmp_path: Path, burned_in: str = "refuse") -> Path:
    key = tmp_path / "deid.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    return write(
        tmp_path / "router.yaml",
        f"""\
        version: 1
        listen: {{ae_title: DICOM_ROUTER, host: 127.0.0.1, port: 11112}}
        spool: spool
        deidentify:
          research:
            options: [retain_longitudinal_modified_dates, retain_device_identity]
            key_file: {key}
            burned_in: {burned_in}
        destinations:
          research: {{ae_title: RESEARCH, host: 127.0.0.1, port: 11113}}
        rules: []
        default:
          - modify: {{set: {{InstitutionName: Set By Modify}}}}
          - deidentify: research
          - forward: research
        """,
    )


def _instance(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "in.dcm"
    make_instance(
        path,
        PatientName="Secret^Patient",
        PatientID="MRN-4711",
        StudyDate="20240105",
        AccessionNumber="ACC-99",
        ImageComments="x" * 100,
        **kw,
    )
    ds = dcmread(path)
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.ReferencedInstanceSequence = Sequence([ref])
    ds.save_as(path)
    return path


def _deid_lines(out: str) -> dict[str, str]:
    """`explain`'s change lines: path -> 'BEFORE -> AFTER'."""
    found = re.findall(r"^    (\S+) \([0-9A-F]{4},[0-9A-F]{4}\)  (.*)$", out, re.M)
    return dict(found)


def test_explain_shows_each_attribute_deidentify_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Replaced, removed, emptied, added, nested and long values: before -> after."""
    dicom = _instance(tmp_path, BurnedInAnnotation="NO")
    code, out = explain(capsys, _rules(tmp_path), str(dicom))
    assert code == 0
    lines = _deid_lines(out)
    uid = str(dcmread(dicom).SOPInstanceUID)
    assert re.fullmatch(r"'Secret\^Patient' -> 'DR[0-9A-F]{14}'", lines["PatientName"])
    assert lines["InstitutionName"] == "'Set By Modify' -> removed"  # after the modify
    assert lines["AccessionNumber"] == "'ACC-99' -> emptied"
    assert re.fullmatch(r"'20240105' -> '20\d{6}'", lines["StudyDate"])  # shifted back
    assert lines["PatientIdentityRemoved"] == "absent -> 'YES'"
    assert re.fullmatch(
        r"'1\.2\.3\.4\.5\.6\.7' -> '2\.25\.\d+'",
        lines["ReferencedInstanceSequence[0].ReferencedSOPInstanceUID"],
    )
    assert re.fullmatch(rf"'{uid}' -> '2\.25\.\d+'", lines["MediaStorageSOPInstanceUID"])
    assert lines["ImageComments"] == f"'{'x' * 61}...' -> removed"  # cut
    assert f"  deid    research: {len(lines)} attribute(s) changed" in out


def test_explain_says_a_burned_in_image_is_withheld(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """burned_in: refuse and Burned In Annotation YES: withheld, no attribute listed."""
    dicom = _instance(tmp_path, BurnedInAnnotation="YES")
    _, out = explain(capsys, _rules(tmp_path), str(dicom))
    assert "  deid    research: withheld (has or may have burned-in annotation)" in out
    assert not _deid_lines(out)


def test_check_shows_the_profile_its_options_and_the_table_edition(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`check` names each profile with its options, burned_in and PS3.15 2024b, no key."""
    assert main(["check", str(_rules(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert (
        "  deid      research: PS3.15 2024b Basic Profile (Table E.1-1, 621 rows; IOD Types"
        " 2024b, 175 SOP classes), options"
        " retain_longitudinal_modified_dates, retain_device_identity, burned_in refuse,"
        f" key_file {tmp_path / 'deid.key'}"
    ) in out
    assert "k" * 32 not in out
