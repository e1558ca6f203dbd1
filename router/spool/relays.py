"""`answer: relayed`: the router's own Storage Commitment requests to its destinations.

One relay per (modality transaction, `commitment: true` destination): the instances of
the transaction delivered there, our own Transaction UID for the N-ACTION, its state and,
once the destination's N-EVENT-REPORT is recorded, its verdict on each instance. The
forwarder's commitment timer opens relays (`open`), its relay thread asks (`due`,
`asked`, `ask_failed`), and whichever process receives the destination's report records
it (`answer`) before answering it. A relay still open when its transaction is decided
(the timeout) is closed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.dicom import status
from router.spool.commitments import Item
from router.spool.db import Databases

ASKING = "asking"  # the N-ACTION is due at next_attempt_at
ASKED = "asked"  # the destination answered the N-ACTION 0x0000: its report is awaited
ANSWERED = "answered"  # its N-EVENT-REPORT is recorded
CLOSED = "closed"  # the transaction was decided without it (the timeout)
OPEN = (ASKING, ASKED)


@dataclass(frozen=True)
class Relay:
    """One N-ACTION of the router's own, as recorded."""

    relay_uid: str
    transaction_uid: str
    destination: str
    state: str
    created_at: float
    asked_at: float | None
    next_attempt_at: float
    attempts: int
    last_error: str | None
    answered_at: float | None
    event_type: int | None


_COLUMNS = (
    "relay_uid, transaction_uid, destination, state, created_at, asked_at, next_attempt_at,"
    " attempts, last_error, answered_at, event_type"
)


class Relays:
    """The `commitment_relays` and `commitment_relay_items` tables; thread-safe."""

    def __init__(self, db: Databases) -> None:
        self._db = db

    def open(
        self,
        transaction_uid: str,
        relays: Sequence[tuple[str, str, Sequence[Item]]],
        max_open: int,
        now: float | None = None,
    ) -> None:
        """Record the relays (relay UID, destination, items) of one transaction together,
        all due now; OverflowError (nothing recorded) past `max_open` open relays."""
        now = time.time() if now is None else now
        with self._db.queue() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                (open_now,) = db.execute(
                    "SELECT COUNT(*) FROM commitment_relays WHERE state IN (?,?)", OPEN
                ).fetchone()
                if open_now + len(relays) > max_open:
                    raise OverflowError(open_now)
                for relay_uid, destination, items in relays:
                    db.execute(
                        "INSERT INTO commitment_relays (relay_uid, transaction_uid, destination,"
                        " state, created_at, next_attempt_at) VALUES (?,?,?,?,?,?)",
                        (relay_uid, transaction_uid, destination, ASKING, now, now),
                    )
                    db.executemany(
                        "INSERT INTO commitment_relay_items (relay_uid, position, sop_class_uid,"
                        " sop_instance_uid) VALUES (?,?,?,?)",
                        [
                            (relay_uid, i, it.sop_class_uid, it.sop_instance_uid)
                            for i, it in enumerate(items)
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def of_transaction(self, transaction_uid: str) -> list[Relay]:
        """A transaction's relays, by destination name."""
        return self._select("transaction_uid=? ORDER BY destination", transaction_uid)

    def find(self, relay_uid: str) -> Relay | None:
        """The relay of this Transaction UID of ours, if any."""
        found = self._select("relay_uid=?", relay_uid)
        return found[0] if found else None

    def items(self, relay_uid: str) -> list[Item]:
        """The instances a relay asks about, with the destination's verdicts once answered."""
        with self._db.queue() as db:
            rows = db.execute(
                "SELECT sop_class_uid, sop_instance_uid, failure FROM commitment_relay_items"
                " WHERE relay_uid=? ORDER BY position",
                (relay_uid,),
            ).fetchall()
        return [Item(*r) for r in rows]

    def due(self, now: float, reask_before: float) -> list[Relay]:
        """Relays to ask now: due ones, and those asked before `reask_before` and still
        without a report."""
        return self._select(
            "(state=? AND next_attempt_at<=?) OR (state=? AND asked_at<=?) ORDER BY created_at",
            ASKING,
            now,
            ASKED,
            reask_before,
        )

    def asked(self, relay_uid: str, now: float) -> None:
        """The destination answered the N-ACTION 0x0000: its report is awaited."""
        with self._db.queue() as db:
            db.execute(
                "UPDATE commitment_relays SET state=?, asked_at=?, attempts=attempts+1,"
                " last_error=NULL WHERE relay_uid=? AND state IN (?,?)",
                (ASKED, now, relay_uid, *OPEN),
            )

    def ask_failed(self, relay_uid: str, error: str, retry_at: float) -> None:
        """The N-ACTION did not get 0x0000: ask again at `retry_at`."""
        with self._db.queue() as db:
            db.execute(
                "UPDATE commitment_relays SET state=?, next_attempt_at=?, attempts=attempts+1,"
                " last_error=? WHERE relay_uid=? AND state IN (?,?)",
                (ASKING, retry_at, error[:200], relay_uid, *OPEN),
            )

    def reask(self, now: float) -> int:
        """After a restart: every relay asked and not answered is asked again now."""
        with self._db.queue() as db:
            return int(
                db.execute(
                    "UPDATE commitment_relays SET state=?, next_attempt_at=? WHERE state=?",
                    (ASKING, now, ASKED),
                ).rowcount
            )

    def answer(
        self,
        relay_uid: str,
        event_type: int,
        verdicts: Mapping[str, int | None],
        now: float | None = None,
    ) -> bool:
        """Record the destination's report: each instance's Failure Reason (None: committed;
        an instance it did not mention: 0x0110). False when the relay is no longer open
        (answered before, or its transaction decided): nothing changes."""
        now = time.time() if now is None else now
        with self._db.queue() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                changed = db.execute(
                    "UPDATE commitment_relays SET state=?, answered_at=?, event_type=?"
                    " WHERE relay_uid=? AND state IN (?,?)",
                    (ANSWERED, now, event_type, relay_uid, *OPEN),
                ).rowcount
                if changed:
                    rows = db.execute(
                        "SELECT position, sop_instance_uid FROM commitment_relay_items"
                        " WHERE relay_uid=?",
                        (relay_uid,),
                    ).fetchall()
                    db.executemany(
                        "UPDATE commitment_relay_items SET failure=? WHERE relay_uid=?"
                        " AND position=?",
                        [
                            (verdicts.get(sop, status.PROCESSING_FAILURE), relay_uid, pos)
                            for pos, sop in rows
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return bool(changed)

    def close(self, transaction_uid: str) -> None:
        """The transaction is decided: its relays still open are asked no more."""
        with self._db.queue() as db:
            db.execute(
                "UPDATE commitment_relays SET state=? WHERE transaction_uid=? AND state IN (?,?)",
                (CLOSED, transaction_uid, *OPEN),
            )

    def still_open(self, relay_uids: Sequence[str]) -> set[str]:
        """Those of these relays still asking or awaiting a report."""
        marks = ",".join("?" * len(relay_uids))
        with self._db.queue() as db:
            rows = db.execute(
                f"SELECT relay_uid FROM commitment_relays WHERE relay_uid IN ({marks})"
                " AND state IN (?,?)",
                (*relay_uids, *OPEN),
            ).fetchall()
        return {r[0] for r in rows}

    def open_count(self) -> int:
        """Relays asking or awaiting a report."""
        with self._db.queue() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM commitment_relays WHERE state IN (?,?)", OPEN
            ).fetchone()
        return int(count)

    def last_answer(self) -> float:
        """When the newest report was recorded (0: never), for the forwarder's wake-up."""
        with self._db.queue() as db:
            (at,) = db.execute("SELECT MAX(answered_at) FROM commitment_relays").fetchone()
        return float(at or 0.0)

    def delivered_to(
        self, sops: Sequence[str], destinations: Sequence[str]
    ) -> dict[str, list[str]]:
        """Of these instances, those delivered to each of `destinations`: queued (the
        latest spooled copy's delivery is delivered) or forwarded synchronously (its
        latest decision's actions name `forward:<destination>(sync)`): destination -> SOP
        Instance UIDs."""
        found: set[tuple[str, str]] = set()
        if not sops or not destinations:
            return {}
        marks = ",".join("?" * len(destinations))
        with self._db.queue() as db:
            for sop in sops:
                rows = db.execute(
                    "SELECT d.destination FROM deliveries d WHERE d.state='delivered' AND"
                    f" d.destination IN ({marks}) AND d.object_id=(SELECT id FROM objects"
                    " WHERE sop_instance_uid=? ORDER BY received_at DESC LIMIT 1)",
                    (*destinations, sop),
                ).fetchall()
                found.update((destination, sop) for (destination,) in rows)
        synced = {f"forward:{d}(sync)": d for d in destinations}
        with self._db.decisions() as db:
            for sop in sops:
                row = db.execute(
                    "SELECT actions FROM decisions WHERE sop_instance_uid=? ORDER BY at DESC"
                    " LIMIT 1",
                    (sop,),
                ).fetchone()
                for action in str(row[0]).split(",") if row else ():
                    if action in synced:
                        found.add((synced[action], sop))
        out: dict[str, list[str]] = {}
        for sop in sops:  # in request order
            for destination in destinations:
                if (destination, sop) in found:
                    out.setdefault(destination, []).append(sop)
        return out

    def _select(self, where: str, *args: object) -> list[Relay]:
        with self._db.queue() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commitment_relays WHERE {where}", args
            ).fetchall()
        return [Relay(*r) for r in rows]
