"""Durable, atomic placement of files: fsync, link, place, and a crash's leftovers.

A new name for an fsync'd file is made by hard-linking it there directly (the name
appears with the whole file, or not at all), then fsync'ing the folder. Otherwise (the
name exists and is overwritten, `rename`, or another filesystem) the file is linked or
copied to a temporary name in the target folder, fsync'd and renamed over the final
name: a reader or a crash sees the old file or the whole new one, never a torn one.
Disk full, quota, read-only or permission problems become `OutOfResources` (0xA700).

While a temporary name exists, a symbolic link to it sits in the spool's `placing/`
folder (the journal): after a kill -9 or a crash, start-up removes the temporary files
the journal names (`remove_leftovers`) without walking the archive tree.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from pathlib import Path

from router.errors import OutOfResources

JOURNAL = "placing"  # the spool's folder of notes on temporary names
_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what place() names its temporary files


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new names, renames) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's data durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(folder: Path) -> None:
    # New folders need their parent's entry fsync'd too, or a crash can lose them.
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def _link_new(source: Path, target: Path) -> bool:
    """Hard-link `source` as `target` if that name is free and on the same filesystem.

    No temporary name, so nothing to note in the journal or to clean up after a crash:
    the commonest case (a new instance) costs one link and the folder's fsync.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            return False
        raise
    return True


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to the new name `target`, copying across filesystems."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)


def place(
    source: Path,
    target: Path,
    on_exists: str = "overwrite",
    *,
    synced: bool = False,
    journal: Path | None = None,
) -> Path:
    """Durably put `source` at `target` (overwrite, keep or rename); return where it went.

    `synced` says the source's data is already fsync'd (a hard link shares it); `journal`
    is the folder where the temporary name is noted while it exists (see module doc).
    """
    try:
        _makedirs(target.parent)
        if on_exists == "keep" and target.exists():
            return target
        if synced and on_exists != "rename":
            if _link_new(source, target):
                fsync_dir(target.parent)
                return target
            if on_exists == "keep" and target.exists():
                return target  # it appeared since the check above
        token = uuid.uuid4().hex
        tmp = target.parent / f".{target.name}.{token}.tmp"
        note = journal / token if journal is not None else None
        if note is not None:
            os.symlink(tmp.absolute(), note)  # before the name exists: no window without a note
        try:
            link_or_copy(source, tmp)
            if not synced or not os.path.samefile(source, tmp):
                fsync_file(tmp)
            if on_exists == "rename":
                final = _claim(tmp, target)
            else:
                os.replace(tmp, target)
                final = target
        finally:
            tmp.unlink(missing_ok=True)
            if note is not None:
                note.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return final
    except OSError as exc:
        # Whatever the filesystem says (full, read-only, a file where a folder should be),
        # the target cannot take the instance: 0xA700, and nothing was left half-written.
        raise OutOfResources(f"cannot write {target}: {exc.strerror or exc}") from exc


def remove_leftovers(journal: Path) -> list[Path]:
    """Remove the temporary files a killed run left, as noted in `journal`; return them."""
    removed = []
    for note in journal.iterdir():
        try:
            tmp = Path(os.readlink(note))
        except OSError:  # not a note of ours (a plain file): drop it all the same
            note.unlink(missing_ok=True)
            continue
        if _TMP_NAME.fullmatch(tmp.name) and tmp.name.endswith(f".{note.name}.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
        note.unlink()
    return removed


def _claim(tmp: Path, target: Path) -> Path:
    """For on_exists=rename: link tmp to the first free name of target, name_1, name_2..."""
    for n in range(0, 10000):
        candidate = target if n == 0 else target.with_name(f"{target.stem}_{n}{target.suffix}")
        try:
            os.link(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
    raise OutOfResources(f"no free name for {target}")
