"""Decompression for a destination that takes only uncompressed syntaxes (destinations.transcode).

The files are pydicom's own bundled test files (JPEG Baseline, Extended, Lossless,
JPEG-LS, JPEG 2000, RLE, deflated, big endian; none is downloaded), sent by DCMTK's
storescu through the real daemon to a DCMTK storescp that accepts no compressed syntax.
What storescp writes (bit-preserving) must decode to the pixels of the original.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from router.destinations.transcode import decompress
from router.errors import TranscodeError
from tests.peers import StoreSCP
from tests.test_forward import Router, dest, queue_list, rule_file, send, states, wait_until

pytestmark = pytest.mark.interop

# Bundled files left out: no installed codec decodes the first (broken on purpose), and
# DCMTK cannot read the second (implicit VR under an explicit VR syntax), so no storescu
# sends it. JPEG-lossy.dcm is in: pylibjpeg-libjpeg refuses it, GDCM (the fallback) reads it.
LEFT_OUT = {"JPEG2000-embedded-sequence-delimiter.dcm", "SC_rgb_jpeg.dcm"}


def _read(path: str | Path, **kw: Any) -> Dataset:
    """dcmread, quiet: some test files are odd on purpose (implicit VR under an explicit
    syntax) and pydicom warns about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, **kw)


def _pixels(path: str | Path) -> np.ndarray | None:
    """The decoded pixels (YBR converted to RGB, as pydicom shows them), None if none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
        return ds.pixel_array if "PixelData" in ds else None


def _corpus(folder: Path) -> list[Path]:
    """Copies of the bundled test files in a syntax an uncompressed-only PACS refuses or
    reads as-is, each decodable by pydicom here. A copy that lacks a UID the router
    requires, or shares its SOP Instance UID with another, gets a new one (its pixel data
    stays byte for byte as it was)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    seen: set[str] = set()
    for name in sorted(pydicom.data.get_testdata_files()):
        path = Path(name)
        if path.name in LEFT_OUT or path.name.startswith("DICOMDIR"):
            continue
        try:
            ds = _read(path)
            ts = UID(str(ds.file_meta.TransferSyntaxUID))
            if not (ts.is_compressed or ts.is_deflated or not ts.is_little_endian):
                continue
            if "SOPClassUID" not in ds or _pixels(path) is None:
                continue
        except Exception:
            continue
        copy = folder / path.name
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if k not in ds]
        if missing or str(ds.get("SOPInstanceUID", "")) in seen or "SOPInstanceUID" not in ds:
            for keyword in [*missing, "SOPInstanceUID"]:
                setattr(ds, keyword, generate_uid())
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(copy, enforce_file_format=True)
        else:
            shutil.copy(path, copy)
        seen.add(str(ds.SOPInstanceUID))
        out.append(copy)
    return out


class UncompressedSCP(StoreSCP):
    """storescp accepting only uncompressed syntaxes (its default, without +xa)."""

    def argv(self) -> list[str]:
        """StoreSCP's command line minus the accept-everything flag."""
        return [a for a in super().argv() if a != "+xa"]


@pytest.fixture
def plain_pacs(tmp_path: Path) -> UncompressedSCP:
    """A running uncompressed-only storescp; stopped after."""
    scp = UncompressedSCP(tmp_path / "plain-pacs").start()
    yield scp  # type: ignore[misc]
    scp.stop()


def test_corpus_covers_every_compression_family(tmp_path: Path) -> None:
    """The test files include each codec family the issue lists (else the test below
    would prove less than it claims)."""
    names = {
        str(_read(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for p in _corpus(tmp_path)
    }
    families = {UID(n).name.split(" ")[0] for n in names}
    assert {"JPEG", "JPEG-LS", "RLE", "Deflated", "Explicit"} <= families, families
    assert JPEGBaseline8Bit in names and "1.2.840.10008.1.2.4.91" in names  # JPEG 2000
    assert len(names) >= 9


def test_compressed_files_reach_an_uncompressed_pacs_with_the_same_pixels(
    router: Router, plain_pacs: UncompressedSCP, tmp_path: Path
) -> None:
    """Each file is delivered uncompressed with its SOP Instance UID, and decodes to the
    pixels of the original; YBR JPEGs arrive RGB; Lossy Image Compression is kept (01 for
    a lossy JPEG that had none); the spool keeps no decompressed copy."""
    files = _corpus(tmp_path / "corpus")
    d = router(rule_file({"pacs": dest(plain_pacs.ae_title, plain_pacs.port)}, ["forward: pacs"]))
    assert send(d, files) == [0] * len(files)
    wait_until(
        "every delivery done",
        lambda: (
            len(states(d, "pacs")) == len(files) and set(states(d, "pacs")) <= {"delivered", "dead"}
        ),
        timeout=120,
    )
    rows, _ = queue_list(d)
    assert rows == [], rows  # no dead letter
    plain_pacs.wait_count(len(files))  # storescp notes a reception after it has answered
    received = {
        str(_read(p, stop_before_pixels=True).SOPInstanceUID): p for p in plain_pacs.files()
    }
    for original in files:
        sent = _read(original, stop_before_pixels=True)
        got = _read(received[str(sent.SOPInstanceUID)], stop_before_pixels=True)
        ts = UID(str(got.file_meta.TransferSyntaxUID))
        assert not ts.is_compressed and not ts.is_deflated, (original.name, ts.name)
        expected, actual = _pixels(original), _pixels(received[str(sent.SOPInstanceUID)])
        if expected is None:
            assert actual is None
            continue
        assert actual is not None and np.array_equal(expected, actual), original.name
        assert not str(got.get("PhotometricInterpretation", "")).startswith("YBR_FULL"), (
            original.name
        )
        lossy = sent.get("LossyImageCompression")
        if lossy is None and UID(str(sent.file_meta.TransferSyntaxUID)) in (
            JPEGBaseline8Bit,
            JPEGExtended12Bit,
        ):
            lossy = "01"
        assert got.get("LossyImageCompression") == lossy, original.name
    assert not list((d.workdir / "spool" / "work").glob(".decompressed-*"))


def test_a_file_no_codec_decodes_is_a_dead_letter_saying_why(
    router: Router, plain_pacs: UncompressedSCP
) -> None:
    """A JPEG 2000 file whose codestream is broken: a dead letter whose error names the
    decoder's failure, not a retry loop."""
    broken = Path(pydicom.data.get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))
    d = router(rule_file({"pacs": dest(plain_pacs.ae_title, plain_pacs.port)}, ["forward: pacs"]))
    assert send(d, [broken]) == [0]
    wait_until("a dead letter", lambda: states(d, "pacs") == ["dead"])
    (row,) = queue_list(d)[0]
    assert "cannot be decompressed here" in row.error and "J2K" in row.error, row.error
    assert plain_pacs.count() == 0


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_multiframe_ybr_jpeg_decompresses_to_rgb_frames(tmp_path: Path, target: str) -> None:
    """30-frame YBR_FULL_422 JPEG Baseline: every frame, RGB, interleaved, same UID."""
    src = Path(pydicom.data.get_testdata_file("examples_ybr_color.dcm"))
    out = tmp_path / "plain.dcm"
    decompress(src, out, target)
    got = dcmread(out)
    assert got.file_meta.TransferSyntaxUID == target
    assert (got.NumberOfFrames, got.PhotometricInterpretation, got.PlanarConfiguration) == (
        30,
        "RGB",
        0,
    )
    assert got.SOPInstanceUID == dcmread(src, stop_before_pixels=True).SOPInstanceUID
    assert np.array_equal(got.pixel_array, _pixels(src))


def test_decompress_refuses_an_uncompressed_file(tmp_path: Path) -> None:
    """Only compressed files go through decompress(); a codec error is a TranscodeError."""
    plain = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    with pytest.raises(ValueError, match="not compressed"):
        decompress(plain, tmp_path / "out.dcm")
    broken = Path(pydicom.data.get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))
    with pytest.raises(TranscodeError):
        decompress(broken, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


def _big_rle(path: Path, frames: int) -> int:
    """An RLE multi-frame of 512x512 16-bit frames (0.5 MiB each decoded); decoded bytes."""
    rows = cols = 512
    frame = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) % 4096).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.Modality, ds.PatientID = "OT", "BIG"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = 1
    ds.PixelData = frame.tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    one = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([one] * frames)
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return frames * frame.nbytes


PEAK = """
import sys
from pathlib import Path
from router.destinations.transcode import decompress
decompress(Path(sys.argv[1]), Path(sys.argv[2]))
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) // 1024)
"""


@pytest.mark.slow
def test_a_large_multiframe_is_decompressed_one_frame_at_a_time(tmp_path: Path) -> None:
    """600 RLE frames, 300 MiB decoded: decompress() peaks far below the decoded size, and
    the output holds every frame (the last one checked)."""
    src, out = tmp_path / "big-rle.dcm", tmp_path / "plain.dcm"
    decoded = _big_rle(src, 600)
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    peak_mib = int(done.stdout.strip())
    assert peak_mib < 150, f"peak {peak_mib} MiB for {decoded >> 20} MiB decoded"
    assert out.stat().st_size > decoded
    got = dcmread(out)
    assert got.NumberOfFrames == 600 and got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    with out.open("rb") as f:  # the last frame, straight from the file
        f.seek(-512 * 512 * 2, 2)
        last = np.frombuffer(f.read(), dtype="<u2").reshape(512, 512)
    expected = (np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) % 4096).astype(np.uint16)
    assert np.array_equal(last, expected)


def test_gdcm_is_loaded_only_when_a_file_needs_it(tmp_path: Path) -> None:
    """GDCM (~20 MiB a process) is not loaded by importing the router's processes; the
    first file that only GDCM decodes (12-bit JPEG Extended) loads it, and decodes."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import router.process.workers, router.process.forwarder\n"
        "import pydicom.data\n"
        "from router.destinations.transcode import decompress\n"
        "print('gdcm' in sys.modules)\n"
        "decompress(Path(pydicom.data.get_testdata_file('JPEG-lossy.dcm')), Path(sys.argv[1]))\n"
        "print('gdcm' in sys.modules)\n"
    )
    out = tmp_path / "out.dcm"
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"], result.stderr
    assert not dcmread(out).file_meta.TransferSyntaxUID.is_compressed
