"""Filesystem destinations (design §4 store, §5, §7): durable, atomic placement."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.errors import OutOfResources
from router.spool.durable import place, remove_leftovers


def temp_files(folder: Path) -> list[Path]:
    """Leftover temporary files of place() anywhere below `folder`."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A received file to place."""
    path = tmp_path / "incoming" / "received.dcm"
    path.parent.mkdir()
    path.write_bytes(b"NEW CONTENT")
    return path


# --- place ---------------------------------------------------------------------------


def test_place_creates_missing_folders(tmp_path: Path, source: Path) -> None:
    """place() creates the target's folders and puts the content there."""
    target = tmp_path / "out" / "a" / "b" / "x.dcm"
    assert place(source, target) == target
    assert target.read_bytes() == b"NEW CONTENT"


def test_place_keeps_the_source(tmp_path: Path, source: Path) -> None:
    """The source file is still there after placing (later actions may need it)."""
    place(source, tmp_path / "out" / "x.dcm")
    assert source.read_bytes() == b"NEW CONTENT"


def test_place_overwrite_replaces_existing(tmp_path: Path, source: Path) -> None:
    """on_exists=overwrite replaces an existing file with the new content."""
    target = tmp_path / "out" / "x.dcm"
    target.parent.mkdir()
    target.write_bytes(b"OLD")
    assert place(source, target, "overwrite") == target
    assert target.read_bytes() == b"NEW CONTENT"


def test_place_default_is_overwrite(tmp_path: Path, source: Path) -> None:
    """Without on_exists, an existing file is overwritten."""
    target = tmp_path / "out" / "x.dcm"
    target.parent.mkdir()
    target.write_bytes(b"OLD")
    place(source, target)
    assert target.read_bytes() == b"NEW CONTENT"


def test_place_keep_leaves_existing(tmp_path: Path, source: Path) -> None:
    """on_exists=keep leaves an existing file untouched and adds no other file."""
    target = tmp_path / "out" / "x.dcm"
    target.parent.mkdir()
    target.write_bytes(b"OLD")
    assert place(source, target, "keep") == target
    assert target.read_bytes() == b"OLD"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.dcm"]


def test_place_rename_adds_numbered_files(tmp_path: Path, source: Path) -> None:
    """on_exists=rename keeps the existing file and writes name_1, name_2... beside it."""
    target = tmp_path / "out" / "x.dcm"
    target.parent.mkdir()
    target.write_bytes(b"OLD")
    first = place(source, target, "rename")
    second = place(source, target, "rename")
    assert (first.name, second.name) == ("x_1.dcm", "x_2.dcm")
    assert target.read_bytes() == b"OLD"
    assert first.read_bytes() == second.read_bytes() == b"NEW CONTENT"


def test_place_rename_uses_target_when_free(tmp_path: Path, source: Path) -> None:
    """on_exists=rename writes the target itself when nothing is there yet."""
    target = tmp_path / "out" / "x.dcm"
    assert place(source, target, "rename") == target


@pytest.mark.parametrize("on_exists", ["overwrite", "keep", "rename"])
def test_place_leaves_no_temp_files(tmp_path: Path, source: Path, on_exists: str) -> None:
    """No temporary file remains after placing, whatever on_exists says."""
    target = tmp_path / "out" / "x.dcm"
    place(source, target, on_exists)
    place(source, target, on_exists)
    assert temp_files(tmp_path) == []


def test_place_synced_source_still_copies_content(tmp_path: Path, source: Path) -> None:
    """With synced=True the content placed is the source's."""
    target = tmp_path / "out" / "x.dcm"
    place(source, target, synced=True)
    assert target.read_bytes() == b"NEW CONTENT"


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder where creating a file fails with a permission/read-only error, even as root."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            yield folder
        finally:
            folder.chmod(stat.S_IRWXU)
        return
    # Root ignores permissions; sysfs refuses new files to everyone, without any mount.
    folder = Path("/sys")
    probe = folder / "dicom-router-probe"
    try:
        probe.open("wb").close()
    except OSError:
        yield folder
        return
    probe.unlink()
    pytest.skip("no folder refuses root here")


def test_place_into_unwritable_folder_is_out_of_resources(
    unwritable_folder: Path, source: Path
) -> None:
    """A folder that refuses writes gives OutOfResources (0xA700) and leaves no file."""
    target = unwritable_folder / "dicom-router-test.dcm"
    with pytest.raises(OutOfResources) as caught:
        place(source, target)
    assert caught.value.status == 0xA700
    assert not target.exists()
    assert not [p for p in unwritable_folder.iterdir() if "dicom-router-test" in p.name]


def test_place_below_unwritable_folder_is_out_of_resources(
    unwritable_folder: Path, source: Path
) -> None:
    """A subfolder that cannot be created gives OutOfResources (0xA700)."""
    target = unwritable_folder / "dicom-router-test" / "x.dcm"
    with pytest.raises(OutOfResources) as caught:
        place(source, target)
    assert caught.value.status == 0xA700
    assert not target.parent.exists()


@pytest.mark.parametrize(
    "below", ["x.dcm", "sub/x.dcm"], ids=["file-as-parent", "file-as-grandparent"]
)
def test_place_where_a_file_blocks_the_folder_is_out_of_resources(
    tmp_path: Path, source: Path, below: str
) -> None:
    """A file where the target's folder should be makes the target unwritable: 0xA700."""
    blocker = tmp_path / "out"
    blocker.write_bytes(b"I am a file")
    with pytest.raises(OutOfResources) as caught:
        place(source, blocker / below)
    assert caught.value.status == 0xA700


@pytest.mark.parametrize(
    "below", ["x.dcm", "sub/x.dcm"], ids=["file-as-parent", "file-as-grandparent"]
)
def test_place_where_a_file_blocks_the_folder_writes_nothing(
    tmp_path: Path, source: Path, below: str
) -> None:
    """A failed place() leaves the blocking file as it was and no temporary file."""
    blocker = tmp_path / "out"
    blocker.write_bytes(b"I am a file")
    with pytest.raises((OSError, OutOfResources)):
        place(source, blocker / below)
    assert blocker.read_bytes() == b"I am a file"
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------- the journal


def test_place_with_a_journal_leaves_it_empty(tmp_path: Path, source: Path) -> None:
    """A completed place removes its note: placing/ holds notes only while a store runs."""
    journal = tmp_path / "placing"
    journal.mkdir()
    place(source, tmp_path / "out" / "a.dcm", journal=journal)
    assert list(journal.iterdir()) == []
    assert temp_files(tmp_path / "out") == []


def test_remove_leftovers_removes_the_noted_temporary_file(tmp_path: Path) -> None:
    """A note (a link named by the token) and its `.<name>.<token>.tmp` both go."""
    journal, folder = tmp_path / "placing", tmp_path / "deep" / "archive"
    journal.mkdir()
    folder.mkdir(parents=True)
    token = "0123456789abcdef0123456789abcdef"
    leftover = folder / f".x.dcm.{token}.tmp"
    leftover.write_bytes(b"half")
    os.symlink(leftover, journal / token)
    assert remove_leftovers(journal) == [leftover]
    assert not leftover.exists() and list(journal.iterdir()) == []


def test_remove_leftovers_never_removes_what_is_not_a_temporary_name(tmp_path: Path) -> None:
    """A note pointing at a stored file, or at another token's name, removes only the note."""
    journal = tmp_path / "placing"
    journal.mkdir()
    stored = tmp_path / "x.dcm"
    stored.write_bytes(b"kept")
    other = tmp_path / f".x.dcm.{'f' * 32}.tmp"
    other.write_bytes(b"kept")
    os.symlink(stored, journal / ("0" * 32))
    os.symlink(other, journal / ("1" * 32))
    assert remove_leftovers(journal) == []
    assert stored.exists() and other.exists() and list(journal.iterdir()) == []
