"""Non-conformant UIDs that DCMTK storescp and Orthanc accept, against the real daemon.

Issue 21 row 11: a SOP Instance UID with a leading-zero component, a trailing dot or a
letter was refused 0xC210. Such a UID is accepted with one warning line naming its
defect, stored under the UID as received and forwarded as received; a UID that cannot be
safe in a file name (a separator, "..", a leading dot, a control byte) is still 0xC210.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from router.dicom.header import uid_problem
from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.peers import StoreSCP, pyn_store, storescu
from tests.test_forward import dest, rule_file
from tests.test_scp import kept, module_daemon

# pydicom warns (as pytest errors) about the UIDs these tests make on purpose.
pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

# UID -> the defect its warning line names.
NON_CONFORMANT = {
    "1.2.840.0123.5": "component 4 '0123' has a leading zero",
    "1.2.3.": "ends with a dot",
    "1.2.abc.4": "component 3 'abc' is not a number",
}
# A backslash splits a value in two (PS3.5 6.4): tests/test_templates.py has that one.
UNSAFE = ["1.2/3.4", "1..2.3", ".1.2.3", "1.2\x013"]
ARCHIVE = "archive/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


def ct(path: Path, **kw: str) -> Path:
    """A small CT with these UIDs."""
    make_ct(path, size=4096, **kw)
    return path


def read(path: Path) -> Dataset:
    """A file's header."""
    return dcmread(path, stop_before_pixels=True)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """DCMTK storescp, the forward destination."""
    with StoreSCP(tmp_path_factory.mktemp("uids") / "storescp") as scp:
        yield scp


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pacs: StoreSCP) -> Iterator[RouterDaemon]:
    """A daemon storing under ARCHIVE and forwarding everything to `pacs`."""
    config = rule_file(
        {"archive": f'{{path: "{ARCHIVE}"}}', "scp": dest("STORESCP", pacs.port)},
        ["store: archive", "forward: scp"],
    )
    yield from module_daemon(tmp_path_factory, "uids", config)


@pytest.fixture(scope="module")
def sent(
    daemon: RouterDaemon, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, int]]:
    """Each non-conformant UID sent by DCMTK storescu: UID -> (file sent, status)."""
    folder = tmp_path_factory.mktemp("uids-sent")
    files = {}
    for n, uid in enumerate(NON_CONFORMANT):
        files[uid] = ct(folder / f"{n}.dcm", sop_instance_uid=uid)
    result = storescu(daemon.port, list(files.values()))
    return dict(zip(files, zip(files.values(), result.statuses, strict=True), strict=True))


def test_storescu_gets_success_for_each_non_conformant_uid(
    sent: dict[str, tuple[Path, int]],
) -> None:
    """A leading zero, a trailing dot, a letter: each answered 0x0000."""
    assert {uid: status for uid, (_, status) in sent.items()} == dict.fromkeys(NON_CONFORMANT, 0)


def test_each_is_stored_under_its_uid_as_received(
    sent: dict[str, tuple[Path, int]], daemon: RouterDaemon
) -> None:
    """The store path's {SOPInstanceUID} and the stored dataset hold the UID unchanged."""
    for uid, (source, _) in sent.items():
        ds = read(source)
        stored = daemon.workdir / "archive" / ds.StudyInstanceUID / ds.SeriesInstanceUID
        assert read(stored / f"{uid}.dcm").SOPInstanceUID == uid


def test_each_is_forwarded_as_received_to_storescp(
    sent: dict[str, tuple[Path, int]], pacs: StoreSCP
) -> None:
    """storescp gets every one, with the UID it was sent with."""
    pacs.wait_count(len(sent))
    forwarded = {str(read(p).SOPInstanceUID) for p in pacs.files()}
    assert forwarded == set(sent)


def test_each_gets_one_warning_line_naming_its_defect(
    sent: dict[str, tuple[Path, int]], daemon: RouterDaemon
) -> None:
    """One WARNING per instance, naming the UID and what is wrong with it."""
    for uid, defect in NON_CONFORMANT.items():
        daemon.wait_log(f"SOPInstanceUID {uid} ({defect})")
        warnings = [
            line
            for line in daemon.log().splitlines()
            if "WARNING" in line and f"SOPInstanceUID {uid} " in line
        ]
        assert len(warnings) == 1, warnings


@pytest.mark.parametrize("uid", UNSAFE, ids=["slash", "dotdot", "leading-dot", "ctl"])
def test_a_uid_unsafe_in_a_file_name_gets_c210_and_nothing_kept(
    daemon: RouterDaemon, tmp_path: Path, uid: str
) -> None:
    """A separator, "..", a leading dot or a control byte: 0xC210 and one line, nothing kept."""
    source = ct(tmp_path / "unsafe.dcm", sop_instance_uid=uid)
    before = kept(daemon)
    assert pyn_store(daemon.port, [source]) == [0xC210]
    assert kept(daemon) == before
    why = f"SOPInstanceUID {uid_problem(uid)}"  # repr'd: a control byte is escaped
    daemon.wait_log(why)
    (line,) = [line for line in daemon.log().splitlines() if why in line]
    assert "status=0xC210" in line


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_study_and_series_uids_follow_the_same_rule(
    daemon: RouterDaemon, tmp_path: Path, keyword: str
) -> None:
    """A letter in a Study/Series UID is stored as received; a slash in one is 0xC210."""
    ok = ct(tmp_path / "ok.dcm", **{_arg(keyword): "1.2.x.5"})
    bad = ct(tmp_path / "bad.dcm", **{_arg(keyword): "1.2/5"})
    assert pyn_store(daemon.port, [ok, bad]) == [0x0000, 0xC210]
    assert list((daemon.workdir / "archive").rglob("1.2.x.5"))
    daemon.wait_log(f"{keyword} 1.2.x.5 (component 3 'x' is not a number)")


def _arg(keyword: str) -> str:
    """make_ct's argument for a Study/Series Instance UID."""
    return {"StudyInstanceUID": "study_uid", "SeriesInstanceUID": "series_uid"}[keyword]


def test_a_conformant_uid_logs_no_warning(daemon: RouterDaemon, tmp_path: Path) -> None:
    """The usual case is unchanged: 0x0000 and no warning line."""
    uid = generate_uid()
    assert pyn_store(daemon.port, [ct(tmp_path / "ok.dcm", sop_instance_uid=uid)]) == [0x0000]
    daemon.wait_log(uid)
    assert not [line for line in daemon.log().splitlines() if "WARNING" in line and uid in line]
