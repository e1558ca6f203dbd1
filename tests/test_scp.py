"""The storage SCP against real senders (design §3-5, §7): DCMTK and pynetdicom to the daemon.

Every test talks to the real console script on 127.0.0.1 and checks both what the sender
was answered and what ended up on disk. Daemons whose configuration several tests share
are started once per module; a test that needs its own uses the `router` fixture.
Hostile input (stalls, malformed PDUs, garbage datasets, huge instances) is in
`test_scp_hostile.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct, make_instance
from tests.peers import (
    LOOPBACK,
    _storescu_profile,
    echoscu,
    pyn_rejected,
    pyn_store,
    storescu,
)
from tests.seed import SEED_SOP_CLASSES

pytestmark = pytest.mark.interop

ARCHIVE = "archive/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1"


# --------------------------------------------------------------------------- helpers


def rule_file(
    *,
    destinations: dict[str, str] | None = None,
    rules: tuple[str, ...] = (),
    default: str = "[{store: archive}]",
    callers: str | None = None,
    spool_min_free: str = "1MiB",
) -> str:
    """A rule file listening on `{port}` with the `archive` destination and more.

    `rules` are flow-style YAML mappings, one per rule; `callers` a flow-style list.
    """
    lines = [
        "version: 1",
        "listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, network_timeout: 2s}",
        f"spool_min_free: {spool_min_free}",
        "destinations:",
        f'  archive: {{path: "{ARCHIVE}"}}',
        *(f'  {name}: {{path: "{path}"}}' for name, path in (destinations or {}).items()),
    ]
    if callers is not None:
        lines.append(f"callers: {callers}")
    if rules:
        lines += ["rules:", *(f"  - {rule}" for rule in rules)]
    lines.append(f"default: {default}")
    return "\n".join(lines) + "\n"


def module_daemon(
    factory: pytest.TempPathFactory, name: str, config: str
) -> Iterator[RouterDaemon]:
    """Run one daemon for a whole module, in `<tmp>/<name>N/router`; stopped after.

    Killed if SIGTERM takes more than 5 s: a slow stop has its own test, and must not
    make every module that sent malformed PDUs pay for it.
    """
    daemon = RouterDaemon(factory.mktemp(name) / "router", config).start()
    try:
        yield daemon
    finally:
        daemon.stop(timeout=5)


def kept(daemon: RouterDaemon) -> set[Path]:
    """Every file the daemon may have kept: all below its folder but its own bookkeeping."""
    spool = daemon.workdir / "spool"
    return {
        p
        for p in daemon.workdir.rglob("*")
        if p.is_file()
        and p.parent not in (daemon.workdir, spool)  # rule file, logs, lock, databases
    }


def archived(daemon: RouterDaemon, source: Path) -> Path:
    """Where ARCHIVE puts `source` in the daemon's folder (it need not exist)."""
    ds = dcmread(source, stop_before_pixels=True)
    return (
        daemon.workdir
        / "archive"
        / str(ds.PatientID)
        / str(ds.StudyInstanceUID)
        / str(ds.SeriesInstanceUID)
        / f"{ds.SOPInstanceUID}.dcm"
    )


def assert_same_dataset(stored: Dataset, sent: Dataset, *, pixels: bool = True) -> None:
    """Same elements with the same values, in the same order (file meta not compared).

    pixels=False leaves out the Pixel Data bytes (for a change of byte order).
    """
    assert [e.tag for e in stored] == [e.tag for e in sent]
    for elem in sent:
        if pixels or elem.tag != 0x7FE00010:
            assert stored[elem.tag].value == elem.value, f"{elem.tag} {elem.keyword} differs"


def pydicom_file_copy(name: str, dest: Path, **changes: str) -> Path:
    """A pydicom test file re-saved with a fresh SOP Instance UID (and `changes`) at dest."""
    source = get_testdata_file(name)
    assert source is not None, f"pydicom test file {name} missing"
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def pyn_echo(port: int, calling: str = "PYNECHO") -> int:
    """C-ECHO with pynetdicom; returns the status, or -1 when no association was made."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOM_ROUTER")
    try:
        if not assoc.is_established:
            return -1
        rsp = assoc.send_c_echo()
        assoc.release()
        return int(rsp.Status) if "Status" in rsp else -1
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


# --------------------------------------------------------------------------- the plain daemon

# Statuses by calling AE title; anyone else is stored under ARCHIVE.
PLAIN = rule_file(
    destinations={"blocked": "blocked/{PatientID}/{SOPInstanceUID}.dcm"},
    rules=(
        "{name: refuse, match: {calling_ae: REJECTER}, actions: [{reject: 0x0124}]}",
        "{name: warned, match: {calling_ae: WARNER}, actions: [{store: archive}, {warn: 0xB007}]}",
        "{name: strip, match: {calling_ae: STRIPPER},"
        " actions: [{modify: {remove: [private]}}, {store: archive}]}",
        "{name: coerce, match: {calling_ae: COERCER},"
        " actions: [{modify: {set: {InstitutionName: COERCED BY ROUTER}}}, {store: archive}]}",
        "{name: drop, match: {calling_ae: DISCARDER}, actions: [discard]}",
        "{name: unwritable, match: {calling_ae: BLOCKED}, actions: [{store: blocked}]}",
    ),
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """The daemon most tests share: store everything under ARCHIVE, statuses by calling AE."""
    yield from module_daemon(tmp_path_factory, "plain", PLAIN)


def test_c_echo_answered_to_dcmtk_echoscu(plain: RouterDaemon) -> None:
    """DCMTK echoscu gets a C-ECHO success."""
    done = echoscu(plain.port)
    assert done.returncode == 0, done.stderr


def test_c_echo_answered_to_pynetdicom(plain: RouterDaemon) -> None:
    """A pynetdicom SCU gets C-ECHO status 0x0000."""
    assert pyn_echo(plain.port) == 0x0000


def test_storescu_store_keeps_the_dataset_at_the_template_path(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """storescu gets 0x0000 and the file at the template's path holds the dataset sent."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=64 * 1024, PatientID="IDENTITY1", StudyDescription="identity")
    result = storescu(plain.port, [source])
    assert result.statuses == [0x0000] and result.ok, result.output
    stored_path = archived(plain, source)
    assert stored_path.is_file()
    stored, sent = dcmread(stored_path), dcmread(source)
    assert_same_dataset(stored, sent)
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID


def _implicit_ct(path: Path) -> Path:
    make_ct(path, size=16 * 1024, transfer_syntax=ImplicitVRLittleEndian)
    return path


def _explicit_ct(path: Path) -> Path:
    make_ct(path, size=16 * 1024, transfer_syntax=ExplicitVRLittleEndian)
    return path


def _rle(path: Path) -> Path:
    return pydicom_file_copy("SC_rgb_rle.dcm", path)


def _jpeg_baseline(path: Path) -> Path:
    return pydicom_file_copy("SC_rgb_jpeg_dcmtk.dcm", path)


def _jpeg2000(path: Path) -> Path:
    return pydicom_file_copy("JPEG2000.dcm", path)


# id -> (file maker, sender, what it proposes, the syntax the stored file must have).
# "profile": storescu with one context proposing these syntaxes in this order (storescu
# converts between uncompressed syntaxes); "option": a storescu option; "files": the
# file's own syntax first; "pynetdicom": one context with these syntaxes, sent chunked.
TS_CASES: dict[str, tuple[Callable[[Path], Path], str, list[str], str]] = {
    "dcmtk-implicit-before-explicit": (
        _explicit_ct,
        "profile",
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ImplicitVRLittleEndian,
    ),
    "dcmtk-explicit-before-implicit": (
        _implicit_ct,
        "profile",
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        ExplicitVRLittleEndian,
    ),
    "dcmtk-big-endian-first-of-three": (
        _implicit_ct,
        "profile",
        [ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ExplicitVRBigEndian,
    ),
    "dcmtk-implicit-only": (_explicit_ct, "option", ["-xi"], ImplicitVRLittleEndian),
    "dcmtk-rle-lossless": (_rle, "files", [], RLELossless),
    "dcmtk-jpeg-baseline": (_jpeg_baseline, "files", [], JPEGBaseline8Bit),
    "pynetdicom-implicit-before-explicit": (
        _implicit_ct,
        "pynetdicom",
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ImplicitVRLittleEndian,
    ),
    "pynetdicom-rle-before-explicit": (
        _rle,
        "pynetdicom",
        [RLELossless, ExplicitVRLittleEndian],
        RLELossless,
    ),
    "pynetdicom-jpeg2000": (_jpeg2000, "pynetdicom", [JPEG2000], JPEG2000),
}


@pytest.mark.parametrize("case", list(TS_CASES), ids=list(TS_CASES))
def test_first_proposed_transfer_syntax_is_accepted_and_stored(
    plain: RouterDaemon, tmp_path: Path, case: str
) -> None:
    """The syntax proposed first in a context is accepted, and the file is stored in it."""
    make, sender, proposal, expected = TS_CASES[case]
    source = make(tmp_path / "in.dcm")
    sop_class = dcmread(source, stop_before_pixels=True).SOPClassUID
    if sender == "pynetdicom":
        contexts = [build_context(sop_class, proposal)]
        assert pyn_store(plain.port, [source], contexts=contexts) == [0x0000]
    else:
        if sender == "profile":
            profile = tmp_path / "profile.cfg"
            _storescu_profile(profile, [(sop_class, proposal)])  # names it FILES
            extra = ["-xf", str(profile), "FILES"]
        else:
            extra = proposal
        result = storescu(
            plain.port, [source], propose="files" if sender == "files" else "default", extra=extra
        )
        assert result.statuses == [0x0000], result.output
    stored_path = archived(plain, source)
    assert stored_path.is_file()
    stored, sent = dcmread(stored_path), dcmread(source)
    assert stored.file_meta.TransferSyntaxUID == expected
    if expected == ExplicitVRBigEndian:  # the same pixels, in the other byte order
        assert (stored.pixel_array == sent.pixel_array).all()
        assert_same_dataset(stored, sent, pixels=False)
    else:
        assert stored.PixelData == sent.PixelData  # raw bytes: encapsulated frames too
        assert_same_dataset(stored, sent)


def test_every_seed_sop_class_is_received_and_stored(plain: RouterDaemon, tmp_path: Path) -> None:
    """All 130 storage SOP classes of the seed table get 0x0000 and are stored as sent."""
    study, series = generate_uid(), generate_uid()
    sent: dict[str, tuple[str, Path]] = {}  # SOP Instance UID -> (SOP class, file)
    for n, (sop_class, _name) in enumerate(SEED_SOP_CLASSES):
        path = tmp_path / f"{n:03d}.dcm"
        uid = make_instance(path, sop_class, study_uid=study, series_uid=series, PatientID="SEED")
        sent[str(uid)] = (sop_class, path)
    paths = [path for _, path in sent.values()]
    for start in range(0, len(paths), 44):  # 2 contexts per class: <= 128 per association
        batch = paths[start : start + 44]
        result = storescu(plain.port, batch)
        assert result.statuses == [0x0000] * len(batch), result.output
    folder = plain.workdir / "archive" / "SEED" / study / series
    assert len(list(folder.glob("*.dcm"))) == len(SEED_SOP_CLASSES) == 130
    for uid, (sop_class, _path) in sent.items():
        stored = dcmread(folder / f"{uid}.dcm")
        assert stored.SOPClassUID == sop_class
        assert stored.file_meta.MediaStorageSOPClassUID == sop_class


def test_private_sop_class_is_received_and_stored(plain: RouterDaemon, tmp_path: Path) -> None:
    """A private SOP class UID nobody registered is accepted and stored like any other."""
    source = tmp_path / "private.dcm"
    make_instance(source, PRIVATE_SOP_CLASS, PatientID="PRIVATECLASS")
    result = storescu(plain.port, [source])
    assert result.statuses == [0x0000], result.output
    stored = dcmread(archived(plain, source))
    assert stored.SOPClassUID == PRIVATE_SOP_CLASS
    assert_same_dataset(stored, dcmread(source))


# --------------------------------------------------------------------------- action statuses


def test_reject_rule_answers_its_code_and_keeps_nothing(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """A `reject: 0x0124` rule answers 0x0124 and nothing is stored or spooled."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    before = kept(plain)
    result = storescu(plain.port, [source], calling="REJECTER")
    assert result.statuses == [0x0124], result.output
    assert kept(plain) == before


def test_warn_rule_answers_the_warning_and_stores(plain: RouterDaemon, tmp_path: Path) -> None:
    """A `warn: 0xB007` rule answers 0xB007 and the instance is stored unchanged."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    result = storescu(plain.port, [source], calling="WARNER")
    assert result.statuses == [0xB007], result.output
    assert_same_dataset(dcmread(archived(plain, source)), dcmread(source))


def test_modify_remove_private_answers_b006_and_stores_without_private_tags(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """`modify: {remove: [private]}` answers 0xB006 and the stored file has no private tags."""
    source = pydicom_file_copy("CT_small.dcm", tmp_path / "private-tags.dcm")
    sent = dcmread(source)
    del sent[0xFFFCFFFC]  # Data Set Trailing Padding: not content, and storescu drops it
    sent.save_as(source)
    assert any(elem.tag.is_private for elem in sent)  # the premise
    result = storescu(plain.port, [source], calling="STRIPPER")
    assert result.statuses == [0xB006], result.output
    stored = dcmread(archived(plain, source))
    assert not any(elem.tag.is_private for elem in stored.iterall())
    sent.remove_private_tags()
    assert_same_dataset(stored, sent)


def test_modify_set_answers_b000_and_stores_the_new_value(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """`modify: {set: ...}` answers 0xB000 and the stored file carries the new value."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096, InstitutionName="ORIGINAL HOSPITAL")
    result = storescu(plain.port, [source], calling="COERCER")
    assert result.statuses == [0xB000], result.output
    stored = dcmread(archived(plain, source))
    assert stored.InstitutionName == "COERCED BY ROUTER"
    sent = dcmread(source)
    sent.InstitutionName = "COERCED BY ROUTER"
    assert_same_dataset(stored, sent)


def test_discard_answers_success_and_keeps_nothing(plain: RouterDaemon, tmp_path: Path) -> None:
    """A `discard` rule answers 0x0000 and nothing is stored or spooled."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    before = kept(plain)
    result = storescu(plain.port, [source], calling="DISCARDER")
    assert result.statuses == [0x0000], result.output
    assert kept(plain) == before


def test_sop_class_mismatch_answers_a900_and_keeps_nothing(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """A dataset saying MR sent as CT (Affected SOP Class) gets 0xA900; nothing is kept."""
    source = tmp_path / "mr-as-ct.dcm"
    make_instance(source, MRImageStorage, PatientID="MISMATCH")
    ds = dcmread(source)
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # pynetdicom sends this class
    ds.save_as(source)  # as is: enforce_file_format would copy SOPClassUID into the meta
    before = kept(plain)
    statuses = pyn_store(plain.port, [source])  # contexts from the file meta: CT
    assert statuses == [0xA900]
    assert kept(plain) == before
    plain.wait_log(f"differs from the request's {CTImageStorage}")


def test_unwritable_store_target_answers_a700_and_leaves_nothing(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """A store whose folder cannot be made (a file in the way) gets 0xA700, no partial file."""
    blocker = plain.workdir / "blocked"
    blocker.write_bytes(b"a regular file where the destination folder should be\n")
    source = tmp_path / "ct.dcm"
    make_ct(source, size=64 * 1024, PatientID="BLOCKED1")
    try:
        before = kept(plain)
        result = storescu(plain.port, [source], calling="BLOCKED")
        assert result.statuses == [0xA700], result.output
        assert kept(plain) == before
        assert not [p for p in plain.workdir.rglob("*") if p.name.endswith(".tmp")]
    finally:
        blocker.unlink()
    # The daemon serves on, and the same store works once the folder can be made.
    result = storescu(plain.port, [source], calling="BLOCKED")
    assert result.statuses == [0x0000], result.output
    stored = plain.workdir / "blocked" / "BLOCKED1" / f"{dcmread(source).SOPInstanceUID}.dcm"
    assert stored.read_bytes().endswith(source.read_bytes()[-64 * 1024 :])


# --------------------------------------------------------------------------- free space


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """A daemon whose spool_min_free (100 TiB) no disk here meets."""
    config = rule_file(
        spool_min_free="100TiB",
        rules=("{name: drop, match: {calling_ae: DISCARDER}, actions: [discard]}",),
    )
    yield from module_daemon(tmp_path_factory, "full", config)


def test_below_spool_min_free_a_store_gets_a700(full: RouterDaemon, tmp_path: Path) -> None:
    """Below spool_min_free a store gets 0xA700, nothing is kept, and echo still works."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    before = kept(full)
    result = storescu(full.port, [source])
    assert result.statuses == [0xA700], result.output
    assert kept(full) == before
    assert echoscu(full.port).returncode == 0


def test_below_spool_min_free_even_a_discard_rule_gets_a700(
    full: RouterDaemon, tmp_path: Path
) -> None:
    """The free-space check comes before any rule: a discard rule also answers 0xA700."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    result = storescu(full.port, [source], calling="DISCARDER")
    assert result.statuses == [0xA700], result.output


# --------------------------------------------------------------------------- callers

CALLERS = (
    "[{ae_title: CT_SCANNER_1}, {ae_title: 'MR_*'},"
    " {ae_title: FAR_AWAY, hosts: [10.9.9.9]}, {ae_title: LOCAL_ONLY, hosts: [127.0.0.0/8]}]"
)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """A daemon that admits only the CALLERS."""
    yield from module_daemon(tmp_path_factory, "gated", rule_file(callers=CALLERS))


@pytest.mark.parametrize("calling", ["INTRUDER", "mr_7", "FAR_AWAY"])
def test_caller_not_admitted_gets_associate_rj_calling_ae_not_recognized(
    gated: RouterDaemon, tmp_path: Path, calling: str
) -> None:
    """An unlisted AE, a case-mismatched glob, or a listed AE from another host get (1, 1, 3)."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    before = kept(gated)
    rj = pyn_rejected(gated.port, [source], calling=calling)
    assert (rj.result, rj.source, rj.reason) == (1, 1, 3)
    assert kept(gated) == before
    gated.wait_log(f"association from {calling}@127.0.0.1 rejected: calling AE not in callers")


@pytest.mark.parametrize("calling", ["CT_SCANNER_1", "MR_7", "LOCAL_ONLY"])
def test_listed_caller_is_admitted_and_stored(
    gated: RouterDaemon, tmp_path: Path, calling: str
) -> None:
    """An exact entry, a glob entry and a host-restricted entry from its host all store."""
    source = tmp_path / "ct.dcm"
    make_ct(source, size=4096)
    assert pyn_store(gated.port, [source], calling=calling) == [0x0000]
    assert_same_dataset(dcmread(archived(gated, source)), dcmread(source))


def test_echoscu_from_rejected_caller_fails(gated: RouterDaemon) -> None:
    """C-ECHO from an AE not in callers gets no association; an admitted AE's succeeds."""
    refused = echoscu(gated.port, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    assert echoscu(gated.port, calling="MR_ECHO").returncode == 0


# --------------------------------------------------------------------------- rule matching

ROUTES = {
    "by_calling": "by_calling/{SOPInstanceUID}.dcm",
    "by_called": "by_called/{SOPInstanceUID}.dcm",
    "wrong_peer": "wrong_peer/{SOPInstanceUID}.dcm",
    "by_peer": "by_peer/{SOPInstanceUID}.dcm",
    "by_ts": "by_ts/{SOPInstanceUID}.dcm",
    "by_glob": "by_glob/{SOPInstanceUID}.dcm",
    "by_regex": "by_regex/{SOPInstanceUID}.dcm",
    "by_absent": "by_absent/{SOPInstanceUID}.dcm",
}
ROUTED = rule_file(
    destinations=ROUTES,
    rules=(
        "{name: calling, match: {calling_ae: 'CT_*'}, actions: [{store: by_calling}]}",
        "{name: called, match: {called_ae: ROUTER_B}, actions: [{store: by_called}]}",
        "{name: far, match: {calling_ae: PEERTEST, peer: [10.0.0.0/8]},"
        " actions: [{store: wrong_peer}]}",
        "{name: near, match: {calling_ae: PEERTEST, peer: [127.0.0.0/8]},"
        " actions: [{store: by_peer}]}",
        "{name: ts, match: {transfer_syntax: ImplicitVRLittleEndian}, actions: [{store: by_ts}]}",
        "{name: glob, match: {tags: {Manufacturer: {glob: 'ACME*'}}}, actions: [{store: by_glob}]}",
        "{name: regex, match: {tags: {StudyDescription: {regex: '(?i)trial[- ]?42\\b.*'}}},"
        " actions: [{store: by_regex}]}",
        "{name: absent, match: {calling_ae: ABSENT, tags: {AccessionNumber: {present: false}}},"
        " actions: [{store: by_absent}]}",
    ),
)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """A daemon whose rules send each kind of match to its own folder."""
    yield from module_daemon(tmp_path_factory, "routed", ROUTED)


def _without_accession(path: Path) -> None:
    ds = dcmread(path)
    del ds.AccessionNumber
    ds.save_as(path, enforce_file_format=True)


# id -> (calling AE, called AE, make_ct keywords, post-edit, destination folder)
ROUTE_CASES: dict[str, tuple[str, str, dict[str, str], Callable[[Path], None] | None, str]] = {
    "calling-ae-glob": ("CT_42", "DICOM_ROUTER", {}, None, "by_calling"),
    "calling-ae-glob-miss": ("XCT_42", "DICOM_ROUTER", {}, None, "archive"),
    "called-ae-b": ("STORESCU", "ROUTER_B", {}, None, "by_called"),
    "called-ae-a": ("STORESCU", "ROUTER_A", {}, None, "archive"),
    "peer-cidr": ("PEERTEST", "DICOM_ROUTER", {}, None, "by_peer"),
    "transfer-syntax-implicit": (
        "STORESCU",
        "DICOM_ROUTER",
        {"transfer_syntax": ImplicitVRLittleEndian},
        None,
        "by_ts",
    ),
    "tags-glob": ("STORESCU", "DICOM_ROUTER", {"Manufacturer": "ACME Medical"}, None, "by_glob"),
    "tags-glob-case-miss": (
        "STORESCU",
        "DICOM_ROUTER",
        {"Manufacturer": "acme medical"},
        None,
        "archive",
    ),
    "tags-regex": (
        "STORESCU",
        "DICOM_ROUTER",
        {"StudyDescription": "Trial-42 baseline"},
        None,
        "by_regex",
    ),
    "tags-regex-anchored-miss": (
        "STORESCU",
        "DICOM_ROUTER",
        {"StudyDescription": "pretrial 42"},
        None,
        "archive",
    ),
    "tags-present-false-empty": ("ABSENT", "DICOM_ROUTER", {}, None, "by_absent"),
    "tags-present-false-missing": ("ABSENT", "DICOM_ROUTER", {}, _without_accession, "by_absent"),
    "tags-present-false-miss": (
        "ABSENT",
        "DICOM_ROUTER",
        {"AccessionNumber": "ACC1"},
        None,
        "archive",
    ),
}


@pytest.mark.parametrize("case", list(ROUTE_CASES), ids=list(ROUTE_CASES))
def test_rule_match_routes_to_its_destination(
    routed: RouterDaemon, tmp_path: Path, case: str
) -> None:
    """Each match key (calling/called AE, peer, syntax, tags) picks the rule's folder only."""
    calling, called, keywords, edit, expected = ROUTE_CASES[case]
    source = tmp_path / "ct.dcm"
    uid = make_ct(source, size=4096, **keywords)
    if edit is not None:
        edit(source)
    result = storescu(routed.port, [source], calling=calling, called=called)
    assert result.statuses == [0x0000], result.output
    folders = sorted(
        {p.relative_to(routed.workdir).parts[0] for p in routed.workdir.rglob(f"{uid}.dcm")}
    )
    assert folders == [expected]
