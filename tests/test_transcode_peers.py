"""The router decompresses at least what Orthanc does (issue 15, finding 3).

Every compressed (and deflated) file among pydicom's bundled test data is sent by DCMTK's
storescu, on one association, to Orthanc and to the router; each forwards it to its own
storescp that accepts only uncompressed syntaxes (Orthanc through its REST API, one
permissive store job; the router through its queue). The set of instances the router's
storescp receives must contain the set Orthanc's receives. The exchange runs once per
module; each test reads its outcome.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, generate_uid

from router.destinations.transcode import DECODER_DEPENDENCIES, decoding_order
from tests.daemon import RouterDaemon
from tests.peers import LOOPBACK, Orthanc, storescu
from tests.test_forward import dest, rule_file, send, states, wait_until
from tests.test_transcode import UncompressedSCP, _pixels, _read

pytestmark = pytest.mark.interop

# The 12-bit JPEG Extended file pylibjpeg-libjpeg refuses ("misplaced marker segment"):
# GDCM, the fallback decoder, reads it; Orthanc (DCMTK inside) delivers it.
JPEG_LOSSY = "JPEG-lossy.dcm"
# Files storescu cannot read as they are, re-saved by pydicom (pixel data untouched) so that
# both forwarders get them: implicit VR under an explicit VR syntax; UIDs encoded as UN.
RESAVED = {"SC_rgb_jpeg.dcm", "rtdose_rle.dcm"}


@dataclass
class Exchange:
    """What one run of the corpus through both forwarders produced."""

    corpus: dict[str, Path]  # SOP Instance UID -> the file sent
    orthanc: set[str]  # SOP Instance UIDs Orthanc's storescp received
    router: set[str]  # ... and the router's
    router_files: dict[str, Path]
    orthanc_files: dict[str, Path]
    seconds: float


def compressed_corpus(folder: Path) -> dict[str, Path]:
    """Copies of pydicom's test files in a compressed or deflated syntax, by SOP Instance
    UID. A copy that lacks a UID the router requires, or shares its SOP Instance UID with
    another file, gets new UIDs; one in RESAVED is written again by pydicom (either way its
    pixel data stays byte for byte as it was)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    # No pattern: with one, pydicom also looks for its downloadable files (network).
    for name in sorted(pydicom.data.get_testdata_files()):
        path = Path(name)
        try:
            ds = _read(path)
            ts = UID(str(ds.file_meta.TransferSyntaxUID))
        except Exception:
            continue  # not DICOM, or no file meta (pydicom's deliberately raw files)
        if not (ts.is_compressed or ts.is_deflated) or "SOPClassUID" not in ds:
            continue
        copy = folder / path.name
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if k not in ds]
        if missing or "SOPInstanceUID" not in ds or str(ds.SOPInstanceUID) in out:
            for keyword in [*missing, "SOPInstanceUID"]:
                setattr(ds, keyword, generate_uid())
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(copy, enforce_file_format=True)
        elif path.name in RESAVED:
            with warnings.catch_warnings():  # odd values, kept as they are
                warnings.simplefilter("ignore")
                ds.walk(lambda *_: None)  # every element decoded: written in the file's syntax
                ds.save_as(copy, enforce_file_format=True)
        else:
            shutil.copy(path, copy)
        out[str(ds.SOPInstanceUID)] = copy
    return out


def _received(files: list[Path]) -> dict[str, Path]:
    return {str(_read(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def _through_orthanc(workdir: Path, files: list[Path]) -> dict[str, Path]:
    """storescu -> Orthanc -> POST /modalities/plain/store -> uncompressed-only storescp."""
    with UncompressedSCP(workdir / "orthanc-pacs") as pacs:
        modality = {"plain": [pacs.ae_title, LOOPBACK, pacs.port]}
        with Orthanc(workdir / "orthanc", config={"DicomModalities": modality}) as orthanc:
            storescu(orthanc.dicom_port, files, called=orthanc.aet)
            ids = orthanc.get_json("/instances")
            # Permissive: an instance Orthanc cannot send does not stop the others.
            orthanc.post_json(
                "/modalities/plain/store",
                {"Resources": ids, "Synchronous": True, "Permissive": True},
            )
        return _received(pacs.files())


def _through_router(workdir: Path, files: list[Path]) -> dict[str, Path]:
    """storescu -> the router -> its queue -> uncompressed-only storescp."""
    with UncompressedSCP(workdir / "router-pacs") as pacs:
        daemon = RouterDaemon(
            workdir / "router",
            rule_file({"pacs": dest(pacs.ae_title, pacs.port)}, ["forward: pacs"]),
        ).start()
        try:
            assert send(daemon, files) == [0] * len(files)
            wait_until(
                "every delivery done",
                lambda: (
                    set(states(daemon, "pacs")) <= {"delivered", "dead"}
                    and len(states(daemon, "pacs")) == len(files)
                ),
                timeout=120,
            )
        finally:
            daemon.stop()
        return _received(pacs.files())


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """The corpus through Orthanc and through the router, once for the module."""
    workdir = tmp_path_factory.mktemp("transcode-peers")
    corpus = compressed_corpus(workdir / "corpus")
    files = list(corpus.values())
    start = time.monotonic()
    orthanc = _through_orthanc(workdir, files)
    router = _through_router(workdir, files)
    yield Exchange(corpus, set(orthanc), set(router), router, orthanc, time.monotonic() - start)


def _names(ex: Exchange, uids: set[str]) -> list[str]:
    return sorted(ex.corpus[u].name for u in uids)


def test_the_corpus_has_every_compression_family_and_the_12_bit_jpeg(exchange: Exchange) -> None:
    """The files cover JPEG Baseline, Extended (12-bit), Lossless, JPEG-LS, JPEG 2000, RLE
    and deflate: else the comparison below proves less than it claims."""
    syntaxes = {
        UID(str(_read(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)).keyword
        for p in exchange.corpus.values()
    }
    assert {
        "JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLosslessSV1", "JPEGLSLossless",
        "JPEGLSNearLossless", "JPEG2000", "JPEG2000Lossless", "RLELossless",
        "DeflatedExplicitVRLittleEndian",
    } <= syntaxes, syntaxes  # fmt: skip
    assert JPEG_LOSSY in {p.name for p in exchange.corpus.values()}


def test_the_router_delivers_every_file_orthanc_delivers(exchange: Exchange) -> None:
    """Orthanc's delivered set is contained in the router's (the issue's definition of
    done), and the 12-bit JPEG Extended file is in both."""
    missing = exchange.orthanc - exchange.router
    assert not missing, f"Orthanc delivers, the router does not: {_names(exchange, missing)}"
    assert JPEG_LOSSY in _names(exchange, exchange.orthanc)
    print(
        f"\n{len(exchange.corpus)} files, {exchange.seconds:.1f} s;"
        f" Orthanc delivers {len(exchange.orthanc)}, the router {len(exchange.router)};"
        f" the router only: {_names(exchange, exchange.router - exchange.orthanc)};"
        f" neither: {_names(exchange, set(exchange.corpus) - exchange.router - exchange.orthanc)}"
    )


def test_the_12_bit_jpeg_decoded_by_gdcm_has_orthancs_pixels(exchange: Exchange) -> None:
    """What GDCM decoded for the router equals what DCMTK decoded for Orthanc, pixel for
    pixel, and arrives uncompressed."""
    (uid,) = [u for u, p in exchange.corpus.items() if p.name == JPEG_LOSSY]
    ours, theirs = exchange.router_files[uid], exchange.orthanc_files[uid]
    assert not UID(
        str(_read(ours, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    ).is_compressed
    expected, actual = _pixels(theirs), _pixels(ours)
    assert expected is not None and actual is not None
    assert actual.dtype == expected.dtype and np.array_equal(actual, expected)


def test_gdcm_is_tried_after_the_pylibjpeg_and_pyjpegls_plugins() -> None:
    """For every syntax GDCM decodes, the router's codecs come first and GDCM last."""
    orders = {UID(u).keyword: decoding_order(get_decoder(u)) for u in DECODER_DEPENDENCIES}
    assert orders["JPEGExtended12Bit"] == ["pylibjpeg", "gdcm"]
    assert orders["JPEGLSLossless"] == ["pylibjpeg", "pyjpegls", "gdcm"]
    assert all(order[-1] == "gdcm" and len(order) > 1 for order in orders.values()), orders
