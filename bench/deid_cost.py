"""What de-identifying costs: CPU time per instance of the deidentify action on a 0.5 MB CT.

    .venv/bin/python bench/deid_cost.py [--iterations 500]

The action as the pipeline runs it (`router.actions.deidentify.apply`: the header parsed,
the PS3.15 Basic Profile applied, Pixel Data copied raw) on a CT of bench/harness.py's
make_ct (512 KiB of pixels) with PHI, written to a temp folder. process_time around many
iterations, so the figure is CPU, not wall time. Target (issue 17): <= 2 ms per instance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import make_ct

from router.actions.deidentify import apply
from router.actions.modify import apply_modify
from router.config.actions import ModifySpec
from router.dicom.deid import Profile


def main() -> None:
    """Print ms of CPU per de-identified instance (the first, warming, call left out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    profile = Profile(os.urandom(32), frozenset({"retain_longitudinal_modified_dates"}))
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "ct.dcm", Path(tmp) / "out.dcm"
        make_ct(
            source,
            PatientName="Secret^Patient",
            PatientID="MRN-4711",
            PatientBirthDate="19700101",
            AccessionNumber="ACC-99",
            ReferringPhysicianName="Dr^Who",
            InstitutionName="General Hospital",
        )
        spec = ModifySpec.model_validate({"set": {"InstitutionName": "X"}})
        runs = {
            "deidentify": lambda: apply(source, profile, target),
            "modify (one set: the rewrite alone)": lambda: apply_modify(source, spec, target),
        }
        for name, run in runs.items():
            run()  # warm: the table is read once per process
            start = time.process_time()
            for _ in range(args.iterations):
                run()
            cpu = time.process_time() - start
            print(
                f"{name}: {cpu / args.iterations * 1e3:.3f} ms CPU per instance "
                f"({source.stat().st_size / 1e6:.2f} MB CT, {args.iterations} iterations)"
            )
    print("target (issue 17): deidentify <= 2 ms")


if __name__ == "__main__":
    main()
