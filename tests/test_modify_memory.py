"""`modify` on big instances keeps memory flat (design §7), through the real daemon.

A 1 GB multi-frame instance with a private block goes through `modify: {remove:
[private], set: {InstitutionName: X}}` to a filesystem store and a queued forward to DCMTK
storescp. No process of the daemon (main, workers, forwarder) ever holds more than
100 MiB resident, and both outputs equal the input except the change.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.daemon import RouterDaemon
from tests.dicomgen import make_multiframe
from tests.peers import StoreSCP
from tests.test_forward import (
    _forwarder_pid,
    _vm_hwm_mib,
    dest,
    rule_file,
    send,
    states,
    wait_until,
)

Router = Callable[..., RouterDaemon]
LIMIT_MIB = 100


def header_and_pixels(path: Path) -> tuple[Dataset, str, int]:
    """The dataset before Pixel Data, and the SHA-256 and size of the bytes from it on."""
    with path.open("rb") as fp:
        header = dcmread(fp, stop_before_pixels=True)
        digest, size = hashlib.sha256(), 0
        while chunk := fp.read(1 << 22):
            digest.update(chunk)
            size += len(chunk)
    return header, digest.hexdigest(), size


def expected_header(source: Path) -> Dataset:
    """The input's header with the change applied."""
    header = dcmread(source, stop_before_pixels=True)
    header.remove_private_tags()
    header.InstitutionName = "X"
    return header


@pytest.mark.slow
def test_1gb_instance_is_modified_stored_and_forwarded_with_flat_memory(
    router: Router, store_scp: StoreSCP, tmp_path: Path
) -> None:
    """Store and queued forward of a modified 1 GB instance: every process peaks at
    <= 100 MiB, and both copies are the input minus the private block, plus the new
    InstitutionName, with Pixel Data byte for byte."""
    big = tmp_path / "big.dcm"
    make_multiframe(big, 1024**3, private_creator="ROUTER TEST", InstitutionName="Original")
    d = router(
        rule_file(
            {
                "archive": '{path: "archive/{SOPInstanceUID}.dcm"}',
                "scp": dest("STORESCP", store_scp.port),
            },
            [
                "modify: {remove: [private], set: {InstitutionName: X}}",
                "store: archive",
                "forward: scp",
            ],
        )
    )
    assert d.proc is not None
    forwarder = _forwarder_pid(d.proc.pid)

    assert send(d, [big]) == [0xB006]  # Elements Discarded: a removal
    store_scp.wait_count(1, timeout=120)
    wait_until("delivered", lambda: states(d, "scp") == ["delivered"], timeout=30)
    # The main process, its receiving workers (which modify) and the forwarder.
    peaks = {"forwarder": _vm_hwm_mib(forwarder), **d.peak_rss_mib()}
    assert all(peak <= LIMIT_MIB for peak in peaks.values()), peaks

    want = expected_header(big)
    _, pixels, size = header_and_pixels(big)
    assert size > 1024**3 - 1024
    (stored,) = (d.workdir / "archive").glob("*.dcm")
    (forwarded,) = store_scp.files()
    for copy in (stored, forwarded):
        header, digest, copied = header_and_pixels(copy)
        assert header == want, copy
        assert (digest, copied) == (pixels, size), copy


def _peak_mib(tmp_path: Path, call: str, big: Path, out: Path) -> int:
    """Run `call` (which reads sys.argv[1] and writes sys.argv[2]) in a fresh interpreter;
    its peak resident memory in MiB."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        f"{call}\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'):\n"
        "        print(int(line.split()[1]) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(big), str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    return int(done.stdout)


def test_apply_modify_of_a_256mib_file_peaks_under_100mib(tmp_path: Path) -> None:
    """The function alone, in a fresh interpreter: its peak RSS does not follow the size."""
    big, out = tmp_path / "big.dcm", tmp_path / "out.dcm"
    make_multiframe(big, 256 * 1024**2, private_creator="ROUTER TEST")
    call = (
        "from router.config.actions import ModifySpec\n"
        "from router.actions.modify import apply_modify\n"
        "spec = ModifySpec(remove=['private'], set={'InstitutionName': 'X'})\n"
        "apply_modify(Path(sys.argv[1]), spec, Path(sys.argv[2]))"
    )
    assert _peak_mib(tmp_path, call, big, out) <= LIMIT_MIB
    assert header_and_pixels(out)[1:] == header_and_pixels(big)[1:]
    assert dcmread(out, stop_before_pixels=True) == expected_header(big)


def test_deidentify_of_a_256mib_file_peaks_under_100mib_with_pixels_unchanged(
    tmp_path: Path,
) -> None:
    """The deidentify action streams Pixel Data as modify does (issue 17): its peak RSS
    does not follow the size, and the pixels are the input's, byte for byte."""
    big, out = tmp_path / "big.dcm", tmp_path / "out.dcm"
    make_multiframe(big, 256 * 1024**2, private_creator="ROUTER TEST", PatientName="Secret^Patient")
    call = (
        "from router.actions.deidentify import apply\n"
        "from router.dicom.deid import Profile\n"
        "apply(Path(sys.argv[1]), Profile(bytes(range(32))), Path(sys.argv[2]))"
    )
    assert _peak_mib(tmp_path, call, big, out) <= LIMIT_MIB
    assert header_and_pixels(out)[1:] == header_and_pixels(big)[1:]
    header = dcmread(out, stop_before_pixels=True)
    assert header.PatientIdentityRemoved == "YES"
    assert "Secret" not in str(header.PatientName)
