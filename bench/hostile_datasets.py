"""Issue 7 rows 3, 4, 10 against a real daemon: deflate-bomb peak RSS, broken structures, fds.

    .venv/bin/python bench/hostile_datasets.py [--code DIR]

--code runs the daemon on another copy of the `router` package (PYTHONPATH=DIR), e.g.
`git archive <commit> router | tar -x -C DIR` for a before/after comparison. Prints
the bomb's status, time and the daemon's idle RSS and VmHWM; each broken dataset's
status; the daemon's open fds before and after 60 one-instance associations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian  # noqa: E402
from pynetdicom.presentation import build_context  # noqa: E402

from tests import brokendata  # noqa: E402
from tests.daemon import RouterDaemon  # noqa: E402
from tests.dicomgen import make_ct  # noqa: E402
from tests.peers import AssociationAborted, pyn_store  # noqa: E402
from tests.test_scp import rule_file  # noqa: E402

MiB = 1 << 20


def status(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", default=str(REPO), help="folder holding the router package")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-datasets-"))
    daemon = RouterDaemon(tmp / "router", rule_file(), env={"PYTHONPATH": args.code}).start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        bomb = brokendata.deflate_bomb(tmp / "bomb.dcm", 512 * MiB)
        idle = status(pid, "VmRSS")
        start = time.monotonic()
        context = build_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
        got = pyn_store(daemon.port, [bomb], contexts=[context])
        print(
            f"bomb {bomb.stat().st_size} B -> 512 MiB: {[hex(s) for s in got]} in "
            f"{time.monotonic() - start:.2f} s; idle RSS {idle / MiB:.0f} MiB, "
            f"VmHWM {max(daemon.peak_rss_mib().values()):.0f} MiB (the highest of its processes)"
        )
        for name in BROKEN:
            path = getattr(brokendata, name)(tmp / f"{name}.dcm")
            try:
                answer: object = [hex(s) for s in pyn_store(daemon.port, [path])]
            except AssociationAborted:
                answer = "aborted"
            print(f"{name}: {answer}")
        ct = tmp / "ct.dcm"
        make_ct(ct, size=4096)
        for _ in range(3):
            pyn_store(daemon.port, [ct])
        time.sleep(0.5)
        before = len(os.listdir(f"/proc/{pid}/fd"))
        for _ in range(60):
            pyn_store(daemon.port, [ct])
        time.sleep(0.5)
        print(f"fds before 60 associations {before}, after {len(os.listdir(f'/proc/{pid}/fd'))}")
    finally:
        daemon.stop(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


BROKEN = ("truncated_pixel_data", "trailing_garbage", "unclosed_sequence", "unterminated_fragments")

if __name__ == "__main__":
    main()
