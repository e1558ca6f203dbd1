"""What de-identifying costs: CPU time per instance of the deidentify action on a 0.5 MB CT.

    .venv/bin/python bench/deid_cost.py [--iterations 300] [--header FILE.dcm]

The action as the pipeline runs it (`router.actions.deidentify.apply`: the header parsed,
the PS3.15 Basic Profile applied, Pixel Data copied raw) on a CT of bench/harness.py's
make_ct (512 KiB of pixels) with PHI, written to a temp folder. Every iteration is
another instance of one series: its SOP Instance UID (file meta and dataset) is patched
to a new value before the call, so the UID cache never knows it (the study and series
UIDs, the same for the whole series, are cached after the first instance, as in the
pipeline). "new profile" runs each instance under a new Profile: every cache cold.
process_time around each call only, so the figure is CPU, not wall time, without the
patching. Target (issue 17): <= 2 ms per instance. `--header FILE.dcm` takes the header
of a real file instead (e.g. pydicom's CT_small.dcm: 258 elements, many of them private),
with the same 512 KiB of pixels.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import make_ct
from pydicom import dcmread

from router.actions.deidentify import apply
from router.actions.modify import apply_modify
from router.config.actions import ModifySpec
from router.dicom.deid import Profile

UID_BASE = "1.2.826.0.1.3680043.10.543.1"  # + 11 digits: every UID has one length


def main() -> None:
    """Print ms of CPU per instance: deidentify (warm and cold caches), a modify rewrite."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument(
        "--options",
        default="retain_longitudinal_modified_dates",
        help="comma-separated profile options (default: %(default)s)",
    )
    parser.add_argument("--header", type=Path, help="take the header of this DICOM file")
    args = parser.parse_args()
    key = os.urandom(32)
    options = frozenset(o for o in args.options.split(",") if o)
    profile = Profile(key, options)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "ct.dcm", Path(tmp) / "out.dcm"
        first = f"{UID_BASE}{0:011d}"
        make_ct(
            source,
            sop_instance_uid=first,
            PatientName="Secret^Patient",
            PatientID="MRN-4711",
            PatientBirthDate="19700101",
            AccessionNumber="ACC-99",
            ReferringPhysicianName="Dr^Who",
            InstitutionName="General Hospital",
        )
        if args.header:
            _take_header(source, args.header, first)
        head = source.read_bytes()[:4096]
        offsets = [i for i in range(len(head)) if head.startswith(first.encode(), i)]
        assert len(offsets) == 2, "the UID is in the file meta and the dataset"
        spec = ModifySpec.model_validate({"set": {"InstitutionName": "X"}})
        runs: dict[str, Callable[[], None]] = {
            "deidentify (one profile)": lambda: apply(source, profile, target),
            "deidentify (new profile each)": lambda: apply(source, Profile(key, options), target),
            "modify (one set: the rewrite alone)": lambda: apply_modify(source, spec, target),
        }
        serial = 0
        for name, run in runs.items():
            run()  # warm: the table is read once per process
            cpu = 0.0
            for _ in range(args.iterations):
                serial += 1
                _patch(source, offsets, f"{UID_BASE}{serial:011d}".encode())
                start = time.process_time()
                run()
                cpu += time.process_time() - start
            print(
                f"{name}: {cpu / args.iterations * 1e3:.3f} ms CPU per instance "
                f"({source.stat().st_size / 1e6:.2f} MB CT, {args.iterations} iterations)"
            )
    print("target (issue 17): deidentify <= 2 ms")


def _take_header(source: Path, header: Path, uid: str) -> None:
    """Rewrite `source` with the elements of `header`'s dataset, its own pixels and `uid`."""
    ours, theirs = dcmread(source), dcmread(header)
    for elem in theirs:
        if elem.tag < 0x7FE00010 and elem.tag >> 16 != 0x0028:
            ours[elem.tag] = elem
    ours.SOPInstanceUID = ours.file_meta.MediaStorageSOPInstanceUID = uid
    ours.save_as(source, enforce_file_format=True)


def _patch(path: Path, offsets: list[int], uid: bytes) -> None:
    """Give the instance another SOP Instance UID (in place: the same length)."""
    with path.open("r+b") as fp:
        for offset in offsets:
            fp.seek(offset)
            fp.write(uid)


if __name__ == "__main__":
    main()
