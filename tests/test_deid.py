"""The PS3.15 Basic Profile transform (router.dicom.deid) and its table, on pydicom's
test files; the `deidentify:` profiles as the rule file loads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from router.actions.deidentify import apply
from router.dicom.deid import Context, Profile, deidentify, may_have_burned_in
from router.dicom.deid_table import table
from router.errors import ConfigError
from router.rules.ruleset import load
from tests.dicomgen import make_instance

KEY = b"k" * 32


def _ct() -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    inner = Dataset()
    inner.PatientName = "Deep^Nested"
    inner.ReferringPhysicianName = "Who^Else"
    ref.ReferencedPatientSequence = Sequence([inner])
    ds.ReferencedInstanceSequence = Sequence([ref])
    ds.add_new(0x00091010, "LO", "private secret")
    return ds


def _run(ds: Dataset, key: bytes = KEY, options: frozenset[str] = frozenset()) -> Dataset:
    deidentify(ds, Context.of(Profile(key, options), ds))
    return ds


def test_the_table_is_ps3_15_2024b_with_its_621_rows() -> None:
    """The shipped Table E.1-1 names its edition and source and has every row."""
    t = table()
    assert (t.rows, t.edition) == (621, "2024b")
    assert "innolitics/dicom-standard" in t.source and t.license.startswith("MIT")


def test_phi_at_every_depth_and_private_elements_are_gone() -> None:
    """Names, IDs, dates and private elements go, nested sequence items included."""
    ds = _run(_ct())
    text = str(ds)
    for phi in ("CompressedSamples", "CT1", "Deep^Nested", "Who^Else", "private secret"):
        assert phi not in text
    assert "StudyDate" in ds and not ds.StudyDate  # Z: zero length
    assert "InstitutionName" not in ds  # X


def test_instance_uids_are_keyed_and_references_follow_them() -> None:
    """SOP Instance UID maps into 2.25, a reference to it maps the same, the class stays."""
    original = _ct()
    ds = _run(_ct())
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.SOPInstanceUID != original.SOPInstanceUID
    ref = ds.ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == original.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_another_key_gives_other_uids_and_pseudonyms() -> None:
    """The same input under two keys: nothing replaced is the same."""
    a, b = _run(_ct()), _run(_ct(), key=b"z" * 32)
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.PatientID != b.PatientID


def test_patient_name_and_id_become_one_keyed_pseudonym() -> None:
    """Patient Name and Patient ID become the same keyed pseudonym, stable across calls."""
    a, b = _run(_ct()), _run(_ct())
    assert a.PatientID == b.PatientID == str(a.PatientName)
    assert a.PatientID.startswith("DR")


def test_markers_name_the_profile_and_options() -> None:
    """Patient Identity Removed, the method, the code sequence and the temporal flag."""
    ds = _run(_ct(), options=frozenset({"retain_device_identity"}))
    assert ds.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113109"]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_modified_dates_keep_the_intervals_of_a_patient() -> None:
    """retain_longitudinal_modified_dates: dates move back by one keyed offset per patient."""
    original = _ct()
    ds = _run(_ct(), options=frozenset({"retain_longitudinal_modified_dates"}))
    assert ds.StudyDate != original.StudyDate and len(ds.StudyDate) == 8
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    shift = Context.of(Profile(KEY), original).shift_days
    assert 1 <= shift <= 3650


def test_full_dates_are_kept() -> None:
    """retain_longitudinal_full_dates keeps dates as they are."""
    original = _ct()
    ds = _run(_ct(), options=frozenset({"retain_longitudinal_full_dates"}))
    assert ds.StudyDate == original.StudyDate


def test_retain_uids_keeps_every_uid() -> None:
    """retain_uids: instance UIDs unchanged."""
    original = _ct()
    ds = _run(_ct(), options=frozenset({"retain_uids"}))
    assert ds.SOPInstanceUID == original.SOPInstanceUID


def test_clean_descriptors_keeps_a_description_without_the_patient_name() -> None:
    """clean_descriptors keeps Study Description, the patient's name masked out of it."""
    ds = _ct()
    ds.StudyDescription = "CT for CompressedSamples chest"
    _run(ds, options=frozenset({"clean_descriptors"}))
    assert ds.StudyDescription == "CT for ***************** chest"


def test_burned_in_rule() -> None:
    """YES or absent on an ultrasound: may have burned-in text; NO or a CT without it: not."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US Image Storage
    assert may_have_burned_in(ds)
    ds.BurnedInAnnotation = "NO"
    assert not may_have_burned_in(ds)
    ct = _ct()
    assert not may_have_burned_in(ct)
    ct.BurnedInAnnotation = "YES"
    assert may_have_burned_in(ct)


def test_the_streamed_rewrite_copies_pixel_data_byte_for_byte(tmp_path: Path) -> None:
    """apply() writes a de-identified file whose Pixel Data is the original's bytes."""
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    make_instance(source, pixel_bytes=4096, PatientName="Secret^Name")
    apply(source, Profile(KEY), target)
    before, after = dcmread(source), dcmread(target)
    assert after.PixelData == before.PixelData
    assert "Secret" not in str(after) and after.PatientIdentityRemoved == "YES"


RULES = """\
version: 1
listen: {{ae_title: R, port: 11112}}
deidentify:
  research:
{profile}
destinations:
  out: {{path: "out/{{SOPInstanceUID}}.dcm"}}
default: [deidentify: research, store: out]
"""


def _load(tmp_path: Path, profile: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(RULES.format(profile=profile))
    load(path)


def _key(tmp_path: Path, size: int = 32, mode: int = 0o600) -> Path:
    key = tmp_path / "deid.key"
    key.write_bytes(os.urandom(size))
    key.chmod(mode)
    return key


def test_a_short_key_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    """A key of 31 bytes is refused with FILE:LINE:COL."""
    key = _key(tmp_path, size=31)
    with pytest.raises(ConfigError, match=r"router.yaml:5:\d+: .*31 bytes: at least 32"):
        _load(tmp_path, f"    key_file: {key}")


def test_a_missing_key_is_a_config_error(tmp_path: Path) -> None:
    """A key file that does not exist is refused."""
    with pytest.raises(ConfigError, match="cannot read the key"):
        _load(tmp_path, f"    key_file: {tmp_path / 'none.key'}")


def test_a_world_readable_key_is_refused(tmp_path: Path) -> None:
    """A key others can read is refused."""
    key = _key(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        _load(tmp_path, f"    key_file: {key}")


def test_an_unsupported_option_is_refused_with_its_reason(tmp_path: Path) -> None:
    """clean_pixel_data is refused, saying why."""
    key = _key(tmp_path)
    with pytest.raises(ConfigError, match="clean_pixel_data is not supported: cleaning burned-in"):
        _load(tmp_path, f"    key_file: {key}\n    options: [clean_pixel_data]")


def test_the_key_can_be_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """key_credential reads $CREDENTIALS_DIRECTORY/NAME."""
    _key(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    _load(tmp_path, "    key_credential: deid.key")


def test_a_listed_class_uid_follows_its_row() -> None:
    """Manufacturer's Device Class UID is U in the table: replaced, though its name says Class."""
    ds = _ct()
    ds.ManufacturerDeviceClassUID = "1.2.3.4.5"
    _run(ds)
    assert ds.ManufacturerDeviceClassUID.startswith("2.25.")


def test_retain_device_identity_keeps_the_device_uids() -> None:
    """retain_device_identity: Device UID and Manufacturer's Device Class UID are K."""
    ds = _ct()
    ds.DeviceUID, ds.ManufacturerDeviceClassUID = "1.2.3.4.6", "1.2.3.4.5"
    _run(ds, options=frozenset({"retain_device_identity"}))
    assert (ds.DeviceUID, ds.ManufacturerDeviceClassUID) == ("1.2.3.4.6", "1.2.3.4.5")


def test_clean_gives_a_binary_value_a_dummy() -> None:
    """C on an OB value (Maker Note under clean_descriptors) cannot clean it: a dummy."""
    ds = _ct()
    ds.MakerNote = b"Secret^Camera^Owner!"
    _run(ds, options=frozenset({"clean_descriptors"}))
    assert ds.MakerNote == b"\0\0"


def test_overlay_data_and_curves_are_removed_by_their_wildcard_rows() -> None:
    """(60xx,3000), (60xx,4000) and group 50xx are X; the overlay's other attributes stay."""
    ds = _ct()
    ds.add_new(0x60000010, "US", 16)  # Overlay Rows: not in the table
    ds.add_new(0x60023000, "OW", b"\1\2")
    ds.add_new(0x60004000, "LT", "overlay by Dr Who")
    ds.add_new(0x50000005, "US", 2)  # Curve Dimensions
    _run(ds)
    assert 0x60000010 in ds
    assert not {0x60023000, 0x60004000, 0x50000005} & set(ds.keys())
