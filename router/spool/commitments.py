"""Storage Commitment transactions in queue.db, and the verdict on each referenced instance.

A receiving process records a transaction (`record`) in one transaction before it answers
the N-ACTION, so a transaction answered 0x0000 survives any kill. The forwarder's one
timer (`router.destinations.commitment`) decides each instance from the spool's own
facts (`verdicts`) and marks the transaction reported once the modality has the report.

An instance is committed when its latest spooled copy has every delivery delivered, or,
when it was never queued (a rule that stores or forwards synchronously), when its
decision was a success: the file was fsync'd before the C-STORE was answered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.dicom import status
from router.spool.db import Databases

PENDING = "pending"  # instances not all decided yet
REPORTING = "reporting"  # decided: the report waits to be delivered
REPORTED = "reported"
ABANDONED = "abandoned"  # the report could not be delivered before its last attempt
# An instance neither queued nor in the decision log this long after the request is
# unknown (0x0112): the decision log is written within a fraction of a second.
UNKNOWN_GRACE = 5.0
# Actions (as the decision log writes them) that keep an instance; without one it is
# withheld: a modality must not delete what the router dropped.
KEPT_BY = ("store", "forward")
_UNDECIDED = -1  # a verdict not reached yet (Failure Reasons are positive)


class DuplicateTransaction(Exception):
    """The Transaction UID is already recorded."""


@dataclass(frozen=True)
class Item:
    """One referenced instance and, once decided, its Failure Reason (None: committed)."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None


@dataclass(frozen=True)
class Transaction:
    """A Storage Commitment request as recorded."""

    transaction_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    received_at: float
    deadline: float
    state: str
    event_type: int | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    lease_at: float | None = None  # renewed while the request's association is open


_COLUMNS = (
    "transaction_uid, calling_ae, called_ae, peer, received_at, deadline, state, event_type,"
    " attempts, next_attempt_at, last_error, lease_at"
)


class Commitments:
    """The `commitments` and `commitment_items` tables; thread-safe."""

    def __init__(self, db: Databases) -> None:
        self._db = db

    def record(self, txn: Transaction, items: Sequence[Item], max_open: int) -> None:
        """Record a new transaction durably; DuplicateTransaction if its UID is known,
        OverflowError if its caller already has `max_open` transactions not reported."""
        with self._db.queue() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute(
                    "SELECT 1 FROM commitments WHERE transaction_uid=?", (txn.transaction_uid,)
                ).fetchone():
                    raise DuplicateTransaction(txn.transaction_uid)
                (open_now,) = db.execute(
                    "SELECT COUNT(*) FROM commitments WHERE calling_ae=? AND state IN (?,?)",
                    (txn.calling_ae, PENDING, REPORTING),
                ).fetchone()
                if open_now >= max_open:
                    raise OverflowError(open_now)
                db.execute(
                    f"INSERT INTO commitments ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        txn.transaction_uid,
                        txn.calling_ae,
                        txn.called_ae,
                        txn.peer,
                        txn.received_at,
                        txn.deadline,
                        PENDING,
                        None,
                        0,
                        txn.received_at,
                        None,
                        txn.lease_at,
                    ),
                )
                db.executemany(
                    "INSERT INTO commitment_items (transaction_uid, position, sop_class_uid,"
                    " sop_instance_uid) VALUES (?,?,?,?)",
                    [
                        (txn.transaction_uid, i, it.sop_class_uid, it.sop_instance_uid)
                        for i, it in enumerate(items)
                    ],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def due(self, now: float | None = None) -> list[Transaction]:
        """Transactions to look at now: pending ones, and reports due for an attempt."""
        now = time.time() if now is None else now
        with self._db.queue() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commitments WHERE state=? OR (state=? AND"
                " next_attempt_at<=?) ORDER BY received_at",
                (PENDING, REPORTING, now),
            ).fetchall()
        return [Transaction(*r) for r in rows]

    def watch(self, uids: Sequence[str], now: float) -> list[Transaction]:
        """Renew the lease of these transactions (their association is open); those of
        them decided and waiting for their report."""
        marks = ",".join("?" * len(uids))
        with self._db.queue() as db:
            db.execute(
                f"UPDATE commitments SET lease_at=? WHERE transaction_uid IN ({marks})",
                [now, *uids],
            )
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commitments WHERE state=? AND transaction_uid IN"
                f" ({marks})",
                [REPORTING, *uids],
            ).fetchall()
        return [Transaction(*r) for r in rows]

    def release(self, uids: Sequence[str]) -> None:
        """The association closed: the forwarder reports these on a new one from now."""
        marks = ",".join("?" * len(uids))
        with self._db.queue() as db:
            db.execute(
                f"UPDATE commitments SET lease_at=NULL WHERE transaction_uid IN ({marks})",
                list(uids),
            )

    def listing(self, limit: int = 100) -> list[Transaction]:
        """The newest transactions, any state (for `commitments` and the trace)."""
        with self._db.queue() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commitments ORDER BY received_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Transaction(*r) for r in rows]

    def items(self, transaction_uid: str) -> list[Item]:
        """A transaction's instances in request order, with their verdicts once decided."""
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT sop_class_uid, sop_instance_uid, failure FROM commitment_items"
                " WHERE transaction_uid=? ORDER BY position",
                (transaction_uid,),
            ).fetchall()
        return [Item(*r) for r in rows]

    def of_instances(self, sops: Sequence[str]) -> list[tuple[Transaction, Item]]:
        """The transactions referencing these SOP instances, oldest first (for `trace`)."""
        marks = ",".join("?" * len(sops))
        cols = ", ".join(f"c.{c.strip()}" for c in _COLUMNS.split(","))
        with self._db.queue() as db:
            rows = db.execute(
                f"SELECT {cols}, i.sop_class_uid, i.sop_instance_uid, i.failure"
                " FROM commitment_items i JOIN commitments c USING (transaction_uid)"
                f" WHERE i.sop_instance_uid IN ({marks}) ORDER BY c.received_at",
                list(sops),
            ).fetchall()
        return [(Transaction(*r[:12]), Item(*r[12:])) for r in rows]

    def open_counts(self) -> tuple[int, float | None]:
        """Transactions not yet reported, and the oldest one's request time."""
        with self._db.queue() as db:
            count, oldest = db.execute(
                "SELECT COUNT(*), MIN(received_at) FROM commitments WHERE state IN (?,?)",
                (PENDING, REPORTING),
            ).fetchone()
        return int(count), oldest

    def verdicts(self, txn: Transaction, now: float) -> list[Item] | None:
        """Every instance's verdict, or None while one is still undecided before the deadline.

        Verdicts reached are kept (`decided`) as they come: a tick looks again only at the
        instances from the first undecided one on, so a large transaction waiting for
        its last delivery costs one query a tick, not one per instance.
        """
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT position, sop_class_uid, sop_instance_uid, failure, decided"
                " FROM commitment_items WHERE transaction_uid=? ORDER BY position",
                (txn.transaction_uid,),
            ).fetchall()
        out: list[Item] = []
        newly: list[tuple[int | None, str, int]] = []
        for position, sop_class, sop_instance, failure, decided in rows:
            if not decided:
                failure = self._verdict(Item(sop_class, sop_instance), txn.received_at, now)
                if failure == _UNDECIDED:
                    if now < txn.deadline:
                        self._keep(txn.transaction_uid, newly)
                        return None
                    failure = status.PROCESSING_FAILURE  # the timeout: the modality keeps it
                newly.append((failure, txn.transaction_uid, position))
            out.append(Item(sop_class, sop_instance, failure))
        return out

    def _keep(self, transaction_uid: str, newly: Sequence[tuple[int | None, str, int]]) -> None:
        """Store the verdicts reached so far (final: a delivered instance stays delivered)."""
        if newly:
            with self._db.queue() as db:
                db.executemany(
                    "UPDATE commitment_items SET failure=?, decided=1 WHERE transaction_uid=?"
                    " AND position=?",
                    newly,
                )

    def _verdict(self, item: Item, received_at: float, now: float) -> int | None:
        """None committed, a Failure Reason, or _UNDECIDED."""
        with self._db.queue() as db:
            row = db.execute(
                "SELECT o.id, o.sop_class_uid, SUM(d.state='dead'), SUM(d.state!='delivered'"
                " AND d.state!='dead') FROM objects o LEFT JOIN deliveries d ON d.object_id=o.id"
                " WHERE o.sop_instance_uid=? GROUP BY o.id ORDER BY o.received_at DESC LIMIT 1",
                (item.sop_instance_uid,),
            ).fetchone()
        if row is not None:
            if row[1] != item.sop_class_uid:
                return status.CLASS_INSTANCE_CONFLICT
            if row[2]:
                return status.PROCESSING_FAILURE  # dead-lettered
            return _UNDECIDED if row[3] else None
        with self._db.decisions() as db:
            dec = db.execute(
                "SELECT sop_class_uid, status, actions FROM decisions WHERE sop_instance_uid=?"
                " ORDER BY at DESC LIMIT 1",
                (item.sop_instance_uid,),
            ).fetchone()
        if dec is None:
            return _UNDECIDED if now < received_at + UNKNOWN_GRACE else status.NO_SUCH_OBJECT
        if dec[0] != item.sop_class_uid:
            return status.CLASS_INSTANCE_CONFLICT
        if status.category(int(dec[1])) == "failure":
            return status.PROCESSING_FAILURE  # rejected when it was sent
        if not any(a.startswith(KEPT_BY) for a in str(dec[2]).split(",")):
            return status.PROCESSING_FAILURE  # discarded (or no action keeps it): withheld
        return None

    def decide(self, transaction_uid: str, items: Sequence[Item], event_type: int) -> None:
        """Store the verdicts; the report is due now."""
        with self._db.queue() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "UPDATE commitment_items SET failure=?, decided=1 WHERE transaction_uid=?"
                    " AND position=?",
                    [(it.failure, transaction_uid, i) for i, it in enumerate(items)],
                )
                db.execute(
                    "UPDATE commitments SET state=?, event_type=? WHERE transaction_uid=?",
                    (REPORTING, event_type, transaction_uid),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def reported(self, transaction_uid: str) -> None:
        """The modality acknowledged the N-EVENT-REPORT."""
        self._set(transaction_uid, REPORTED, None, "reported_at=?,", time.time())

    def report_failed(self, transaction_uid: str, error: str, retry_at: float | None) -> None:
        """The report did not get through: try again at `retry_at`, or give up (None)."""
        if retry_at is None:
            self._set(transaction_uid, ABANDONED, error)
        else:
            self._set(transaction_uid, REPORTING, error, "next_attempt_at=?,", retry_at)

    def _set(self, uid: str, state: str, error: str | None, also: str = "", *args: object) -> None:
        with self._db.queue() as db:
            db.execute(
                f"UPDATE commitments SET {also} state=?, last_error=?, attempts=attempts+1"
                " WHERE transaction_uid=?",
                (*args, state, error, uid),
            )
