"""Every attribute of PS3.15 Table E.1-1 through a real daemon to storescp (issue 17 part 6):
one CT instance carrying each row's tag (a value of its VR; one concrete tag for a repeating
group), sequences with an identifying nested item, private elements before and after Pixel
Data. Sent once without options and once for each date option with every implemented
option: each row's action is checked against what arrived, and no value the profile
removes or replaces is anywhere in the received file."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from router.dicom.deid_iod import resolve, types_for
from router.dicom.deid_table import IMPLEMENTED, Row, action, table
from tests.daemon import RouterDaemon
from tests.peers import StoreSCP, storescu
from tests.test_forward import dest

pytestmark = pytest.mark.interop

WORD = "QZX"  # a part of the patient's name, in every text value: Clean Descriptors masks it
PATIENT_NAME = f"{WORD}^Wvy"
BINARY = ("OB", "OW", "OF", "OD", "OL", "OV", "UN")
REPEATING = {0x50000000: 0x50003000}  # 50xx,xxxx Curve Data: (5000,3000); 60xx: as listed
PROFILES = {
    "NONE": (),
    "FULL": tuple(o for o in IMPLEMENTED if o != "retain_longitudinal_modified_dates"),
    # with every option but Retain UIDs: the UIDs a retain option keeps are kept, others not
    "MODIFIED": tuple(
        o for o in IMPLEMENTED if o not in ("retain_longitudinal_full_dates", "retain_uids")
    ),
}
CT = types_for(CTImageStorage)


def _rows() -> Iterator[tuple[int, Row]]:
    """(tag, row) for each row of the table but the private one."""
    t = table()
    yield from t.exact.items()
    for _, value, row in t.wildcards:
        yield REPEATING.get(value, value), row


def _value(tag: int, vr: str, n: int) -> object:
    """A value of `vr` unique to the row (strings carry its tag and the patient's WORD)."""
    token = f"V{tag:08X}"
    day = datetime.date(1950, 1, 1) + datetime.timedelta(days=n)
    if vr in BINARY:
        return f"B{tag:08X}{WORD}".encode().ljust(16, b"\0")
    simple: dict[str, object] = {
        "DA": day.strftime("%Y%m%d"),
        "DT": day.strftime("%Y%m%d") + "123456",
        "TM": f"{n % 24:02d}{n % 60:02d}07",
        "AS": "045Y",
        "DS": "123.5",
        "IS": "4711",
        "UI": f"1.2.999.{tag}",
        "PN": f"{token}^{WORD}",
        "AE": f"{token}{WORD}",
        "UR": f"http://{token}.example/{WORD}",
        "AT": 0x00100010,
        "FL": 47.5,
        "FD": 47.5,
    }
    if vr in simple:
        return simple[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 4711
    return f"{token} {WORD}"  # CS, SH, LO, ST, LT, UT, UC


def _nested(tag: int) -> Dataset:
    """An item with a name, an institution, an instance UID and a private element."""
    item = Dataset()
    item.PatientName = f"Nested^{tag:08X}"
    item.InstitutionName = f"NI{tag:08X}"
    item.ReferencedSOPInstanceUID = f"1.2.999.77.{tag}"
    item.add_new(0x00090010, "LO", "ROUTERTEST")
    item.add_new(0x00091001, "LO", f"PRIV{tag:08X}")
    return item


def _every_row(path: Path) -> Dataset:
    """The CT instance with every row's attribute, written to `path`; as read back."""
    ds = Dataset()
    for n, (tag, _) in enumerate(sorted(_rows())):
        if tag >> 16 in (0x0000, 0x0002):
            # command elements are the C-STORE request's, not the dataset's; the file meta
            # (Media Storage SOP Instance UID) the router writes itself: another test
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        ds.add_new(tag, vr, Sequence([_nested(tag)]) if vr == "SQ" else _value(tag, vr, n))
    ds.PatientName = PATIENT_NAME
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(8)
    for group in (0x0009, 0x7FE1):  # private, before and after Pixel Data
        ds.add_new(group << 16 | 0x0010, "LO", "ROUTERTEST")
        ds.add_new(group << 16 | 0x1001, "LO", f"PRIVTOP{group:04X}")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


def _rules(key: Path, scps: dict[str, StoreSCP]) -> str:
    lines = [
        "version: 1",
        "listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 1}",
        "spool: spool",
        "spool_min_free: 1MiB",
        "deidentify:",
    ]
    for name, options in PROFILES.items():
        lines.append(f"  {name}: {{key_file: {key}, burned_in: allow, options: {list(options)}}}")
    lines.append("destinations:")
    for name, scp in scps.items():
        lines.append(f"  {name}: {dest(name, scp.port)}")
        lines.append(f'  {name}_file: {{path: "{name}/{{SOPInstanceUID}}.dcm"}}')
    lines.append("rules:")
    for name in PROFILES:
        lines += [
            f"  - name: {name}",
            f"    match: {{calling_ae: {name}}}",
            f"    actions: [deidentify: {name}, forward: {name}, store: {name}_file]",
        ]
    return "\n".join([*lines, "default: [discard]", ""])


Received = dict[str, tuple[Path, Path]]  # profile -> (storescp's file, the router's store)


@pytest.fixture(scope="module")
def every(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Received]:
    """The instance as sent, and per profile what storescp and the `store` got: one daemon,
    one association per profile."""
    tmp = tmp_path_factory.mktemp("every")
    key = tmp / "deid.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    sent = _every_row(tmp / "every.dcm")
    with (
        StoreSCP(tmp / "NONE", ae_title="NONE") as none,
        StoreSCP(tmp / "FULL", ae_title="FULL") as full,
        StoreSCP(tmp / "MODIFIED", ae_title="MODIFIED") as modified,
    ):
        scps = {"NONE": none, "FULL": full, "MODIFIED": modified}
        d = RouterDaemon(tmp / "router", _rules(key, scps)).start()
        try:
            for name, scp in scps.items():
                result = storescu(d.port, [tmp / "every.dcm"], calling=name)
                assert [f.status for f in result.files] == [0x0000], d.log()[-2000:]
                scp.wait_count(1)
            assert "Traceback" not in d.log()
            return sent, {
                name: (scp.files()[0], next((d.workdir / name).glob("*.dcm")))
                for name, scp in scps.items()
            }
        finally:
            d.stop()


def _wrong(sent: Dataset, got: Dataset, options: tuple[str, ...]) -> list[str]:
    """Each top-level row whose element arrived otherwise than its action says."""
    wrong = []
    for tag, row in sorted(_rows()):
        if tag not in sent:
            continue  # command and file meta elements
        todo = resolve(action(row, options), CT, tag)
        before, after = sent[tag], got.get(tag)
        vr = before.VR
        if todo == "X" or after is None:
            ok = todo == "X" and after is None
        elif todo == "Z":
            pseudonym = (
                after.keyword in ("PatientName", "PatientID") and after.value != before.value
            )
            ok = pseudonym or not after.value
        elif vr == "SQ":
            ok = len(after.value) == 1  # K, D, U, C: kept, its item cleaned (another test)
        elif todo == "K":
            ok = after.value == before.value
        elif todo in ("D", "U") or vr in ("DA", "DT", *BINARY):
            ok = after.value not in (None, "", b"", before.value)
        elif vr == "TM":
            ok = after.value == before.value  # C: times are kept, dates move
        else:
            ok = todo == "C" and WORD not in str(after.value).upper()
        if not ok:
            shown = "absent" if after is None else repr(after.value)
            wrong.append(f"{row.name} ({tag:08X}) {todo}: {before.value!r} -> {shown}")
    return wrong


@pytest.mark.parametrize("profile", PROFILES)
def test_each_row_of_the_table_arrives_as_its_action_says(
    every: tuple[Dataset, Received], profile: str
) -> None:
    """X absent, Z empty, D and U other values, K the same, C cleaned; conditional actions
    by the CT Image IOD's Types."""
    sent, got = every
    assert _wrong(sent, dcmread(got[profile][0]), PROFILES[profile]) == []


def _replaced_tokens(sent: Dataset, options: tuple[str, ...]) -> list[bytes]:
    """The unique part of each string or binary value the profile removes or replaces."""
    tokens = []
    for tag, row in _rows():
        elem = sent.get(tag)
        if elem is None or elem.VR in ("SQ", "UI", "DA", "DT", "TM", "AS", "DS", "IS", "US"):
            continue
        if resolve(action(row, options), CT, tag) in ("X", "Z", "D", "U"):
            tokens.append(f"{'B' if elem.VR in BINARY else 'V'}{tag:08X}".encode())
    return tokens


@pytest.mark.parametrize("profile", PROFILES)
def test_no_removed_or_replaced_value_is_anywhere_in_what_arrives(
    every: tuple[Dataset, Received], profile: str
) -> None:
    """The bytes storescp and the store got hold none of the values removed or replaced,
    no private element and no nested name; without options no patient name part, no UID."""
    sent, got = every
    forbidden = [b"ROUTERTEST", b"PRIV", b"Nested^", *_replaced_tokens(sent, PROFILES[profile])]
    if not PROFILES[profile]:
        forbidden += [WORD.encode(), b"WVY", b"1.2.999."]
    for path in got[profile]:
        data = path.read_bytes().upper()
        assert [t for t in forbidden if t.upper() in data] == [], path


@pytest.mark.parametrize("profile", PROFILES)
def test_nested_items_lose_names_institution_uids_and_private_elements(
    every: tuple[Dataset, Received], profile: str
) -> None:
    """In every kept sequence: the name a pseudonym, the institution removed (kept under
    retain_institution_identity), the instance UID replaced (kept under retain_uids)."""
    sent, got = every
    received = dcmread(got[profile][0])
    options = PROFILES[profile]
    items = [e.value[0] for e in received if e.VR == "SQ" and len(e.value) and e.tag in sent]
    kept = [t for t, r in _rows() if resolve(action(r, options), CT, t) not in ("X", "Z")]
    assert len(items) == len([t for t in kept if t in sent and sent[t].VR == "SQ"]) > 0
    for item in items:
        assert not str(item.PatientName).startswith("Nested^")
        assert ("InstitutionName" in item) == ("retain_institution_identity" in options)
        uid_kept = item.ReferencedSOPInstanceUID.startswith("1.2.999.77.")
        assert uid_kept == ("retain_uids" in options)
        assert not [e for e in item if e.tag.is_private]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_file_meta_names_the_replaced_instance_uid(
    every: tuple[Dataset, Received], profile: str
) -> None:
    """The stored file's Media Storage SOP Instance UID is the copy's SOP Instance UID,
    replaced unless retain_uids."""
    sent, got = every
    stored = dcmread(got[profile][1], stop_before_pixels=True)
    assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    kept = stored.SOPInstanceUID == sent.SOPInstanceUID
    assert kept == ("retain_uids" in PROFILES[profile])
