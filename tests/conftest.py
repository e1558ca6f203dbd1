"""Fixtures: real DICOM peers and the real daemon, each in a per-test temp dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import RouterDaemon
from tests.peers import (
    CommitmentModality,
    DicomWebOrthanc,
    Orthanc,
    ScriptedSCP,
    StoreSCP,
    WebhookReceiver,
)


def pytest_configure(config: pytest.Config) -> None:
    """Register our markers (pyproject is shared; unknown markers would warn -> error)."""
    config.addinivalue_line("markers", "slow: takes several seconds (big files, many classes)")
    config.addinivalue_line("markers", "interop: talks to real DCMTK/Orthanc processes")
    config.addinivalue_line(
        "markers",
        "alone: asserts a wall-clock latency or a time budget that neighbours on a 2-core box"
        " would blur: `make test` runs these after the parallel run, one at a time",
    )


# The files with the most test time (seconds in a `make test` run), first: with `--dist
# loadfile` xdist hands out whole files in collection order, and a long file collected last
# (they sort late: studies, stow) would run on one worker after the others have finished.
HEAVY_FIRST = (
    "test_studies.py",  # ~140
    "test_forward.py",  # ~115
    "test_commitment.py",  # ~100
    "test_stow.py",  # ~90
    "test_lifecycle.py",  # ~85
    "test_metrics.py",  # ~60
    "test_pdu_logs.py",  # ~55
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heaviest files first (the order of the tests within a file is kept)."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def store_scp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A running DCMTK storescp (AE STORESCP) accepting every SOP class; stopped after."""
    scp = StoreSCP(tmp_path / "storescp")
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture
def web_orthanc(tmp_path: Path) -> Iterator[DicomWebOrthanc]:
    """Orthanc with DICOMweb at /dicom-web, user router / s3cret; stopped after."""
    server = DicomWebOrthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedSCP]]:
    """Start ScriptedSCPs (destinations answering what they are told); stopped after."""
    started: list[ScriptedSCP] = []

    def start(**kw: Any) -> ScriptedSCP:
        scp = ScriptedSCP(**kw).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A running Orthanc (AE ORTHANC) with empty storage; stopped after."""
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., RouterDaemon]]:
    """Start `dicom-router run` with a rule file given as YAML text; stopped after."""
    started: list[RouterDaemon] = []

    def start(config: str, **kw: Any) -> RouterDaemon:
        daemon = RouterDaemon(tmp_path / f"router{len(started)}", config, **kw)
        started.append(daemon)
        return daemon.start()

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A webhook receiver (http.server) on a free loopback port; closed after."""
    hook = WebhookReceiver()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def modality() -> Iterator[CommitmentModality]:
    """A pynetdicom modality listening for reports on its commitment_port."""
    peer = CommitmentModality()
    try:
        yield peer
    finally:
        peer.close()
