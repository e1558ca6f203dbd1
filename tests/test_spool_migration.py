"""The spool's schema versions: an older spool is migrated at start-up, a newer one refused."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from router.spool.database import Spool
from router.spool.schema import DECISION_MIGRATIONS, QUEUE_MIGRATIONS
from tests.daemon import DICOM_ROUTER, RouterDaemon
from tests.dicomgen import make_instance
from tests.peers import LOOPBACK, StoreSCP

FROZEN = Path(__file__).parent / "data" / "spool_v1"

RULES = """\
version: 1
listen: {ae_title: DICOM_ROUTER, host: 127.0.0.1, port: {port}, workers: 2}
spool: spool
spool_min_free: 1MiB
destinations:
  pacs: {ae_title: STORESCP, host: %s, port: %d, retry: {initial_delay: 0.2s, max_delay: 1s}}
rules: []
default:
  - forward: pacs
"""


def previous_release_spool(root: Path, instance: Path) -> str:
    """A spool as the release before schema versions left it: one delivery pending for pacs."""
    (root / "objects").mkdir(parents=True)
    ds = dcmread(instance, stop_before_pixels=True)
    object_id = "0" * 32
    (root / "objects" / f"{object_id}.dcm").write_bytes(instance.read_bytes())
    now = time.time()
    with sqlite3.connect(root / "queue.db") as db:
        db.executescript((FROZEN / "queue.sql").read_text())
        db.execute(
            "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?)",
            (object_id, ds.SOPInstanceUID, ds.SOPClassUID, ExplicitVRLittleEndian,
             ds.StudyInstanceUID, ds.SeriesInstanceUID, "CT_1", now - 60),
        )  # fmt: skip
        db.execute(
            "INSERT INTO deliveries (object_id, destination, next_attempt_at, updated_at)"
            " VALUES (?, 'pacs', ?, ?)",
            (object_id, now - 60, now - 60),
        )
    with sqlite3.connect(root / "decisions.db") as db:
        db.executescript((FROZEN / "decisions.sql").read_text())
        db.execute(
            "INSERT INTO decisions (at, sop_instance_uid, series_uid, study_uid, sop_class_uid,"
            " calling_ae, called_ae, peer, rule, actions, status, comment, config_version)"
            " VALUES (?,?,?,?,?,'CT_1','DICOM_ROUTER','127.0.0.1','default','forward:pacs',0,"
            " NULL,'v1')",
            (now - 60, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID,
             ds.SOPClassUID),
        )  # fmt: skip
    return str(ds.SOPInstanceUID)


def version(path: Path) -> int:
    """A database's PRAGMA user_version."""
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_previous_release_spool_is_migrated_and_its_queue_delivered(
    tmp_path: Path, store_scp: StoreSCP
) -> None:
    """A spool of the previous release: migrated at start-up, rows kept, pending delivery sent."""
    instance = tmp_path / "ct.dcm"
    make_instance(instance, CTImageStorage, pixel_bytes=1024)
    daemon = RouterDaemon(tmp_path / "router", RULES % (LOOPBACK, store_scp.port))
    sop = previous_release_spool(daemon.workdir / "spool", instance)
    daemon.start()
    try:
        store_scp.wait_count(1)
        assert any(sop in name for name in store_scp.received())
    finally:
        assert daemon.stop() == 0
    spool = daemon.workdir / "spool"
    assert version(spool / "queue.db") == len(QUEUE_MIGRATIONS)
    assert version(spool / "decisions.db") == len(DECISION_MIGRATIONS)
    with sqlite3.connect(spool / "queue.db") as db:
        rows = db.execute(
            "SELECT o.calling_ae, d.state FROM deliveries d JOIN objects o ON o.id=d.object_id"
        ).fetchall()
    assert rows == [("CT_1", "delivered")]
    with sqlite3.connect(spool / "decisions.db") as db:
        assert db.execute("SELECT rule, status FROM decisions").fetchall() == [("default", 0)]


def test_a_spool_opened_by_many_processes_at_once_is_migrated_once(tmp_path: Path) -> None:
    """Four processes opening one old spool together all see the current version, no error."""
    root = tmp_path / "spool"
    instance = tmp_path / "ct.dcm"
    make_instance(instance, CTImageStorage)
    previous_release_spool(root, instance)
    opener = "import sys; from pathlib import Path; from router.spool.database import Spool;" \
        " Spool(Path(sys.argv[1])).close()"  # fmt: skip
    procs = [
        subprocess.Popen([str(DICOM_ROUTER.with_name("python")), "-c", opener, str(root)])
        for _ in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    assert version(root / "queue.db") == len(QUEUE_MIGRATIONS)
    assert Spool(root).due("pacs", 10)[0].sop_instance_uid  # the old row is still due


def test_a_spool_from_a_newer_release_is_refused_with_one_line(tmp_path: Path) -> None:
    """A queue.db of a schema version above this release's: `run` exits 2 with one line."""
    daemon = RouterDaemon(tmp_path / "router", RULES % (LOOPBACK, 1))
    root = daemon.workdir / "spool"
    Spool(root).close()
    with sqlite3.connect(root / "queue.db") as db:
        db.execute(f"PRAGMA user_version={len(QUEUE_MIGRATIONS) + 1}")
    run = subprocess.run(
        [str(DICOM_ROUTER), "run", "-c", str(daemon.config_path)],
        cwd=daemon.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "newer than this release" in lines[0]
    assert version(root / "queue.db") == len(QUEUE_MIGRATIONS) + 1  # left as it was


@pytest.mark.parametrize("db", ["queue.db", "decisions.db"])
def test_opening_a_newer_spool_in_process_raises_spool_too_new(tmp_path: Path, db: str) -> None:
    """The refusal is the StartupError `SpoolTooNew`, for either database."""
    from router.spool.schema import SpoolTooNew

    Spool(tmp_path).close()
    with sqlite3.connect(tmp_path / db) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(SpoolTooNew, match="schema version 99"):
        Spool(tmp_path)


def test_a_spool_of_schema_3_gains_the_commitment_tables_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """A queue.db at version 3 (frozen): migrated to 4, its unit and delivery kept, commitments
    recorded afterwards."""
    from router.spool.commitments import Item, Transaction

    now = time.time()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.executescript((FROZEN.with_name("spool_v3") / "queue.sql").read_text())
        db.execute(
            "INSERT INTO objects (id, sop_instance_uid, sop_class_uid, transfer_syntax,"
            " received_at) VALUES ('o1', '1.2.3', ?, ?, ?)",
            (CTImageStorage, ExplicitVRLittleEndian, now),
        )
        db.execute(
            "INSERT INTO deliveries (object_id, destination, next_attempt_at, updated_at)"
            " VALUES ('o1', 'pacs', ?, ?)",
            (now, now),
        )
        db.execute(
            "INSERT INTO received_units (level, uid, study_uid, calling_ae, first_at, last_at,"
            " count) VALUES ('study', '1.2', '1.2', 'CT_1', ?, ?, 1)",
            (now, now),
        )
    assert version(tmp_path / "queue.db") == 3
    spool = Spool(tmp_path)
    assert version(tmp_path / "queue.db") == len(QUEUE_MIGRATIONS)
    assert spool.due("pacs", 10)[0].sop_instance_uid == "1.2.3"
    assert spool.units.unit("study", "1.2") is not None
    txn = Transaction("9.9", "CT_1", "DICOM_ROUTER", "127.0.0.1", now, now + 60, "", None, 0,
                      now, None)  # fmt: skip
    spool.commitments.record(txn, [Item(CTImageStorage, "1.2.3")], max_open=1)
    assert spool.commitments.open_counts()[0] == 1
    spool.close()


def test_a_spool_of_schema_6_gains_the_relay_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    """A queue.db at version 6 (frozen) with an open commitment: migrated, the transaction
    and its item intact, relays recorded and answered afterwards."""
    from router.spool.commitments import Item

    now = time.time()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.executescript((FROZEN.with_name("spool_v6") / "queue.sql").read_text())
        db.execute(
            "INSERT INTO commitments (transaction_uid, calling_ae, called_ae, peer, received_at,"
            " deadline, next_attempt_at) VALUES ('9.9', 'CT_1', 'ROUTER', '127.0.0.1', ?, ?, ?)",
            (now, now + 60, now),
        )
        db.execute(
            "INSERT INTO commitment_items (transaction_uid, position, sop_class_uid,"
            " sop_instance_uid) VALUES ('9.9', 0, ?, '1.2.3')",
            (CTImageStorage,),
        )
    assert version(tmp_path / "queue.db") == 6
    spool = Spool(tmp_path)
    assert version(tmp_path / "queue.db") == len(QUEUE_MIGRATIONS) == 7
    (txn,) = spool.commitments.due(now)
    assert (txn.transaction_uid, txn.calling_ae, txn.state) == ("9.9", "CT_1", "pending")
    assert spool.commitments.items("9.9") == [Item(CTImageStorage, "1.2.3")]
    spool.relays.open("9.9", [("8.8", "pacs", [Item(CTImageStorage, "1.2.3")])], max_open=1)
    assert spool.relays.answer("8.8", 2, {"1.2.3": 0x0112})
    assert spool.relays.items("8.8") == [Item(CTImageStorage, "1.2.3", 0x0112)]
    spool.close()
