"""The de-identification caches (router.dicom.deid_plan): bounded, and pure speed."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset

from router.actions.deidentify import apply
from router.config.deid import DeidProfile
from router.dicom.deid import Context, Profile, deidentify
from router.dicom.deid_plan import CACHE_ENTRIES, Bounded, Caches
from tests.dicomgen import make_instance

KEY = b"c" * 32
DATES = frozenset({"retain_longitudinal_modified_dates"})


def test_the_uid_cache_keeps_at_most_its_limit() -> None:
    """More distinct UIDs than the cache holds: it keeps CACHE_ENTRIES, the newest."""
    profile = Profile(KEY)
    ctx = Context.of(profile, Dataset())
    uids = [f"1.2.826.0.1.3680043.10.77.{n}" for n in range(CACHE_ENTRIES + 100)]
    for uid in uids:
        ctx.uid(uid)
    cached = profile.caches.uids.entries
    assert len(cached) == CACHE_ENTRIES
    assert uids[-1] in cached and uids[0] not in cached


def test_the_date_cache_keeps_at_most_its_limit() -> None:
    """Shifted dates of more distinct days than the cache holds: it keeps its limit."""
    profile = Profile(KEY, DATES, caches=Caches(dates=Bounded(50)))
    for day in range(80):
        ds = Dataset()
        ds.StudyDate = f"2020{1 + day // 28:02d}{1 + day % 28:02d}"
        deidentify(ds, Context.of(profile, ds), markers=False)
    assert len(profile.caches.dates) == 50


def test_a_cache_changes_no_output(tmp_path: Path) -> None:
    """The same instance: cold caches, warm caches and caches of one entry write one file."""
    source = tmp_path / "in.dcm"
    make_instance(
        source,
        pixel_bytes=512,
        PatientName="Cache^Test",
        StudyDate="20240229",
        FrameOfReferenceUID="1.2.826.0.1.3680043.10.77.1",
    )
    warm = Profile(KEY, DATES)
    tiny = Profile(KEY, DATES, caches=Caches(Bounded(1), Bounded(1)))
    outputs = []
    for n, profile in enumerate((Profile(KEY, DATES), warm, warm, tiny, tiny)):
        target = tmp_path / f"out{n}.dcm"
        apply(source, profile, target)
        outputs.append(target.read_bytes())
    assert len(warm.caches.uids) > 0
    assert all(out == outputs[0] for out in outputs)


def test_a_loaded_profile_gives_one_transform_per_name(tmp_path: Path) -> None:
    """DeidProfile.transform returns the same Profile (and caches) for a name every time."""
    key = tmp_path / "deid.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    profile = DeidProfile.model_validate({"key_file": str(key), "options": sorted(DATES)})
    first = profile.transform("research")
    assert profile.transform("research") is first
    assert profile.transform("other") is not first
