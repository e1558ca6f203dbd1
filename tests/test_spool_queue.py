"""The delivery queue (design §5, §6): its states over a real SQLite spool in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from router.errors import OutOfResources
from router.spool.database import Spool
from router.spool.decisions import DecisionRecord
from router.spool.queue import Instance
from router.spool.stats import queue_stats

CT = Instance("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.2.3", "1.2.3.1")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """An empty spool folder with its databases."""
    return Spool(tmp_path / "spool")


@pytest.fixture
def received(tmp_path: Path) -> Path:
    """A received, fsync'd instance file, as the pipeline hands it to the queue."""
    path = tmp_path / "received.dcm"
    path.write_bytes(b"DICOM BYTES")
    return path


def states_on_disk(spool: Spool) -> list[str]:
    """The `state` column of every delivery, read straight from queue.db."""
    with sqlite3.connect(spool.root / "queue.db") as db:
        return [r[0] for r in db.execute("SELECT state FROM deliveries ORDER BY id")]


def test_enqueue_makes_one_pending_delivery_per_destination(spool: Spool, received: Path) -> None:
    """Three destinations: three pending deliveries of the same instance, each due now."""
    spool.enqueue(received, ["pacs", "archive", "ai"], CT)
    entries = spool.entries()
    assert sorted(d.destination for d in entries) == ["ai", "archive", "pacs"]
    assert {d.state for d in entries} == {"pending"}
    assert {d.sop_instance_uid for d in entries} == {CT.sop_instance_uid}
    assert [len(spool.due(name, 10)) for name in ("pacs", "archive", "ai")] == [1, 1, 1]


def test_enqueue_keeps_one_file_however_many_destinations(spool: Spool, received: Path) -> None:
    """The instance is spooled once, with the received bytes, whatever the fan-out."""
    object_id = spool.enqueue(received, ["pacs", "archive", "ai"], CT)
    assert [p.name for p in spool.objects.iterdir()] == [f"{object_id}.dcm"]
    assert spool.path_of(object_id).read_bytes() == b"DICOM BYTES"
    assert {d.path for d in spool.entries()} == {spool.path_of(object_id)}


def test_enqueue_of_an_unreadable_file_is_out_of_resources_and_leaves_nothing(
    spool: Spool, tmp_path: Path
) -> None:
    """A file that cannot be spooled is 0xA700 for the sender, with no row and no file."""
    with pytest.raises(OutOfResources):
        spool.enqueue(tmp_path / "missing.dcm", ["pacs"], CT)
    assert spool.entries() == []
    assert list(spool.objects.iterdir()) == []


def test_due_returns_only_deliveries_whose_time_has_come(spool: Spool, received: Path) -> None:
    """Of two instances, the one scheduled for later is not due; the other is."""
    spool.enqueue(received, ["pacs"], CT)
    spool.enqueue(received, ["pacs"], CT)
    first, second = spool.due("pacs", 10)
    spool.retry_later(first.id, time.time() + 3600, 0xA700, "out of resources")
    assert [d.id for d in spool.due("pacs", 10)] == [second.id]


def test_due_returns_only_the_destinations_own_deliveries(spool: Spool, received: Path) -> None:
    """A destination's workers never see another destination's deliveries."""
    spool.enqueue(received, ["pacs"], CT)
    spool.enqueue(received, ["archive"], CT)
    assert [d.destination for d in spool.due("archive", 10)] == ["archive"]


def test_due_is_oldest_first_and_stops_at_the_limit(spool: Spool, received: Path) -> None:
    """Deliveries come in the order they became due, at most `limit` of them."""
    ids = [spool.enqueue(received, ["pacs"], CT) for _ in range(5)]
    assert [d.object_id for d in spool.due("pacs", 3)] == ids[:3]


def test_due_leaves_out_the_deliveries_in_hand(spool: Spool, received: Path) -> None:
    """`exclude` (the deliveries a worker is sending) are not handed out twice."""
    spool.enqueue(received, ["pacs"], CT)
    spool.enqueue(received, ["pacs"], CT)
    first, second = spool.due("pacs", 10)
    assert [d.id for d in spool.due("pacs", 10, exclude=[first.id])] == [second.id]


def test_retry_later_defers_and_counts_the_attempt(spool: Spool, received: Path) -> None:
    """A refused attempt is counted, remembered with its status, and due at the time given."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    at = time.time() + 60
    spool.retry_later(d.id, at, 0xA700, "out of resources")
    (later,) = spool.entries()
    assert (later.state, later.attempts, later.next_attempt_at) == ("pending", 1, at)
    assert (later.last_status, later.last_error) == (0xA700, "out of resources")


def test_retry_later_without_reaching_the_destination_counts_no_attempt(
    spool: Spool, received: Path
) -> None:
    """`count=False` (the peer was not reached) defers without using up an attempt."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.retry_later(d.id, time.time() + 60, None, "connection refused", count=False)
    assert spool.entries()[0].attempts == 0


def test_a_retry_in_the_past_is_due_again(spool: Spool, received: Path) -> None:
    """Once its time has come, a deferred delivery is handed out again."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.retry_later(d.id, time.time() - 1, 0xA700, "out of resources")
    assert [x.id for x in spool.due("pacs", 10)] == [d.id]


def test_a_dead_letter_is_not_due_and_keeps_its_file(spool: Spool, received: Path) -> None:
    """A dead letter is never sent again by itself; its file stays for `queue retry`."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.dead_letter(d.id, 0xC000, "cannot understand")
    assert spool.due("pacs", 10) == []
    (dead,) = spool.entries()
    assert (dead.state, dead.last_status, dead.last_error) == ("dead", 0xC000, "cannot understand")
    assert dead.path.exists()


def test_a_dead_letter_is_stored_as_existing_spools_have_it(spool: Spool, received: Path) -> None:
    """On disk a dead letter's state is 'dead', as in spools written by earlier versions."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.dead_letter(d.id, None, "gave up")
    assert states_on_disk(spool) == ["dead"]


def test_requeued_dead_letters_are_due_with_a_fresh_attempt_count(
    spool: Spool, received: Path
) -> None:
    """`queue retry`: every dead letter of the destination is pending and due at once."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.retry_later(d.id, time.time() - 1, 0xA700, "busy")
    spool.dead_letter(d.id, 0xA700, "gave up")
    assert spool.requeue_dead_letters("pacs") == 1
    (again,) = spool.due("pacs", 10)
    assert (again.id, again.state, again.attempts) == (d.id, "pending", 0)


def test_requeue_dead_letters_of_one_destination_leaves_the_others(
    spool: Spool, received: Path
) -> None:
    """`queue retry DEST` touches only DEST's dead letters."""
    spool.enqueue(received, ["pacs", "archive"], CT)
    for name in ("pacs", "archive"):
        spool.dead_letter(spool.due(name, 1)[0].id, None, "gave up")
    assert spool.requeue_dead_letters("archive") == 1
    assert spool.due("pacs", 10) == []
    assert spool.depth() == {"pacs": (0, 1), "archive": (1, 0)}


def test_delivered_is_never_due_again(spool: Spool, received: Path) -> None:
    """A delivered delivery leaves the queue (and `queue list`)."""
    spool.enqueue(received, ["pacs"], CT)
    (d,) = spool.due("pacs", 10)
    spool.delivered(d.id, 0x0000)
    assert spool.due("pacs", 10) == []
    assert spool.entries() == []


def test_the_file_stays_until_every_destination_has_it(spool: Spool, received: Path) -> None:
    """Delivered to one of two destinations: the file stays; to both: it is removed."""
    object_id = spool.enqueue(received, ["pacs", "archive"], CT)
    spool.delivered(spool.due("pacs", 1)[0].id, 0x0000)
    assert spool.path_of(object_id).exists()
    spool.delivered(spool.due("archive", 1)[0].id, 0x0000)
    assert not spool.path_of(object_id).exists()


def test_a_dead_letter_of_one_destination_keeps_the_file(spool: Spool, received: Path) -> None:
    """The other destination's success does not remove what a dead letter still needs."""
    object_id = spool.enqueue(received, ["pacs", "archive"], CT)
    spool.dead_letter(spool.due("pacs", 1)[0].id, None, "gave up")
    spool.delivered(spool.due("archive", 1)[0].id, 0x0000)
    assert spool.path_of(object_id).exists()


def test_purge_removes_the_dead_letters_of_a_destination(spool: Spool, received: Path) -> None:
    """`queue purge DEST`: DEST's dead letters go; pending deliveries stay."""
    kept = spool.enqueue(received, ["pacs"], CT)
    dropped = spool.enqueue(received, ["pacs"], CT)
    spool.dead_letter(
        next(d.id for d in spool.due("pacs", 10) if d.object_id == dropped), None, "x"
    )
    assert spool.purge("pacs") == 1
    assert [(d.object_id, d.state) for d in spool.entries()] == [(kept, "pending")]


def test_purge_removes_the_files_only_dead_letters_needed(spool: Spool, received: Path) -> None:
    """A purged dead letter's file goes (once older than a running daemon's grace)."""
    object_id = spool.enqueue(received, ["pacs"], CT)
    spool.dead_letter(spool.due("pacs", 1)[0].id, None, "gave up")
    an_hour_ago = time.time() - 3600
    os.utime(spool.path_of(object_id), (an_hour_ago, an_hour_ago))
    spool.purge("pacs")
    assert not spool.path_of(object_id).exists()


def test_garbage_collection_spares_files_a_running_daemon_is_queueing(
    spool: Spool, received: Path
) -> None:
    """A young file without rows may be mid-enqueue (linked, not yet committed): kept."""
    orphan = spool.path_of("0" * 32)
    orphan.write_bytes(b"linked, rows not yet committed")
    assert spool.collect_garbage() == 0
    assert orphan.exists()


def test_depth_counts_pending_and_dead_letters_per_destination(
    spool: Spool, received: Path
) -> None:
    """`queue` (no action): pending and dead letters of each destination."""
    spool.enqueue(received, ["pacs", "archive"], CT)
    spool.enqueue(received, ["pacs"], CT)
    spool.dead_letter(spool.due("archive", 1)[0].id, None, "gave up")
    assert spool.depth() == {"pacs": (2, 0), "archive": (0, 1)}


def test_queue_stats_see_pending_dead_letters_and_the_oldest(spool: Spool, received: Path) -> None:
    """The exporter's read-only look: counts and the oldest pending instance's arrival."""
    before = time.time()
    spool.enqueue(received, ["pacs", "archive"], CT)
    spool.enqueue(received, ["pacs"], CT)
    spool.dead_letter(spool.due("archive", 1)[0].id, None, "gave up")
    stats = queue_stats(spool.root, ["pacs", "archive", "unused"])
    assert (stats["pacs"].pending, stats["pacs"].dead_letters) == (2, 0)
    assert (stats["archive"].pending, stats["archive"].dead_letters) == (0, 1)
    assert stats["pacs"].oldest_pending is not None
    assert before <= stats["pacs"].oldest_pending <= time.time()
    assert stats["archive"].oldest_pending is None
    assert (stats["unused"].pending, stats["unused"].dead_letters) == (0, 0)


def test_trace_finds_decisions_and_deliveries_of_a_study(spool: Spool, received: Path) -> None:
    """`trace STUDY_UID`: every C-STORE of the study, and each of its deliveries."""
    spool.enqueue(received, ["pacs", "archive"], CT)
    spool.record_many(
        [
            DecisionRecord(
                time.time(),
                CT.sop_instance_uid,
                CT.series_uid,
                CT.study_uid,
                CT.sop_class_uid,
                "MODALITY",
                "ROUTER",
                "127.0.0.1",
                "ct-to-pacs",
                "forward",
                0x0000,
                None,
                "v1",
            )
        ]
    )
    decisions, deliveries = spool.trace(CT.study_uid)
    assert [(d.sop_instance_uid, d.rule) for d in decisions] == [
        (CT.sop_instance_uid, "ct-to-pacs")
    ]
    assert sorted(d.destination for d in deliveries) == ["archive", "pacs"]
    assert spool.trace("9.9.9") == ([], [])
