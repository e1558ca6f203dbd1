"""Datasets not in the syntax of their presentation context, against the real daemon.

Issue 22 row 3: Explicit VR bytes sent on an Implicit VR context were acknowledged and
stored with a meta saying Implicit, which DCMTK cannot read. Every such mix-up (the other
explicitness, the other byte order, deflated or not, an implicit item or element inside
an explicit dataset) is refused 0xC210 with one log line, and every file the router
stores is read by DCMTK's dcmdump.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import brokendata
from tests.daemon import RouterDaemon
from tests.peers import dcmdump_failures, pyn_store
from tests.test_scp import archived, module_daemon, rule_file
from tests.test_scp_dataset import assert_refused

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterDaemon]:
    """One daemon storing everything under ARCHIVE."""
    yield from module_daemon(tmp_path_factory, "encoding", rule_file())


@pytest.mark.parametrize(
    "build", list(brokendata.MISLABELLED.values()), ids=list(brokendata.MISLABELLED)
)
def test_mislabelled_dataset_gets_c210_nothing_kept_one_log_line(
    plain: RouterDaemon, tmp_path: Path, build: brokendata.Builder
) -> None:
    """Bytes in another syntax than the context's: 0xC210, nothing stored, one line."""
    assert_refused(plain, build(tmp_path / "mislabelled.dcm"), 0xC210)


def test_explicit_bytes_on_an_implicit_context_are_named_in_the_log(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """The campaign's case: the C-STORE line says which encoding came on which context."""
    source = brokendata.MISLABELLED["explicit-as-implicit"](tmp_path / "explicit.dcm")
    line = assert_refused(plain, source, 0xC210)
    assert "encoded in Explicit VR" in line and "says Implicit VR" in line


def test_every_file_the_router_stores_is_read_by_dcmdump(
    plain: RouterDaemon, tmp_path: Path
) -> None:
    """Each syntax well labelled and mislabelled on one association: dcmdump reads all kept."""
    good = [b(tmp_path / f"{n}.dcm") for n, b in brokendata.WELL_LABELLED.items()]
    bad = [b(tmp_path / f"bad-{n}.dcm") for n, b in brokendata.MISLABELLED.items()]
    assert pyn_store(plain.port, [*good, *bad]) == [0x0000] * len(good) + [0xC210] * len(bad)
    assert all(archived(plain, source).is_file() for source in good)
    stored = sorted((plain.workdir / "archive").rglob("*.dcm"))
    assert dcmdump_failures(stored) == {}
