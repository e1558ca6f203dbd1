"""Studies and series as received (router.spool.studies) over a real SQLite spool."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from router.spool.database import Spool
from router.spool.queue import Instance

CT = Instance(
    "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.2.3", "1.2.3.1", "CT_1"
)


@pytest.fixture
def received(tmp_path: Path) -> Path:
    """A received instance file, as the pipeline hands it to the queue."""
    path = tmp_path / "received.dcm"
    path.write_bytes(b"DICOM BYTES")
    return path


def test_two_spool_handles_count_into_the_same_study(tmp_path: Path, received: Path) -> None:
    """Two workers (two Spool objects) add to one study and series row, held, not due."""
    first, second = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    first.queue.enqueue_held(received, ["ai", "pacs"], CT, {"ai": "series"})
    second.queue.enqueue_held(received, ["ai"], replace(CT, sop_instance_uid="1.2.3.5"),
                              {"ai": "series"})  # fmt: skip
    (series,) = [u for u in first.units.of("1.2.3") if u.level == "series"]
    assert (series.count, series.held, series.state) == (2, 2, "collecting")
    assert [d.destination for d in first.due("pacs", 10)] == ["pacs"]
    assert first.due("ai", 10) == []


def test_completing_a_unit_releases_its_held_deliveries_as_one_batch(
    tmp_path: Path, received: Path
) -> None:
    """complete(): every held delivery of the series is pending with one batch number."""
    spool = Spool(tmp_path / "spool")
    for sop in ("1.2.3.4", "1.2.3.5"):
        spool.queue.enqueue_held(
            received, ["ai"], replace(CT, sop_instance_uid=sop), {"ai": "series"}
        )
    assert spool.units.complete("series", "1.2.3.1", "quiet") == 2
    due = spool.due("ai", 10)
    assert len({d.batch for d in due}) == 1 and due[0].batch is not None
    assert spool.units.unit("series", "1.2.3.1").reason == "quiet"  # type: ignore[union-attr]


def test_prune_forgets_completed_units_but_keeps_one_holding_a_late_instance(
    tmp_path: Path, received: Path
) -> None:
    """A unit with a held (late: hold) delivery survives the prune; a finished one does not."""
    spool = Spool(tmp_path / "spool")
    spool.queue.enqueue_held(received, ["ai"], CT, {"ai": "series"})
    spool.units.complete("series", "1.2.3.1", "quiet")
    spool.units.complete("study", "1.2.3", "quiet")
    late = replace(CT, sop_instance_uid="1.2.3.9")
    spool.queue.enqueue_held(received, ["ai"], late, {"ai": "series"}, late="hold")
    spool.prune(time.time() + 1)
    assert [u.level for u in spool.units.of("1.2.3")] == ["series"]
