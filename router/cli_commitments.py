"""`dicom-router commitments` and the commitment lines of `trace`: read from the spool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from router.dicom.status import hex_code
from router.spool.commitments import PENDING, Item, Transaction
from router.spool.database import Spool
from router.spool.relays import ANSWERED

LISTED = 100  # the newest transactions `commitments` shows


def print_commitments(spool: Spool) -> None:
    """Pending and recent Storage Commitment transactions, newest first."""
    now = time.time()
    print(f"{'transaction UID':<64} {'calling AE':<16} {'items':>5} {'failed':>6} {'age':>7} state")
    for txn in spool.commitments.listing(LISTED):
        items = spool.commitments.items(txn.transaction_uid)
        failed = sum(1 for i in items if i.failure is not None)
        print(
            f"{txn.transaction_uid:<64} {txn.calling_ae:<16} {len(items):>5} "
            f"{'-' if txn.state == PENDING else failed:>6} {now - txn.received_at:>6.0f}s "
            f"{_state(txn)}"
        )
        for relay in spool.relays.of_transaction(txn.transaction_uid):
            asked = spool.relays.items(relay.relay_uid)
            failed = sum(1 for i in asked if i.failure is not None)
            verdict = f", {failed} failed" if relay.state == ANSWERED else ""
            error = f" ({relay.last_error})" if relay.last_error and relay.state != ANSWERED else ""
            print(f"  relay {relay.destination}: {relay.state}{error}, {len(asked)} asked{verdict}")


def trace_commitments(spool: Spool, sops: Sequence[str]) -> None:
    """Each transaction that asked for one of these instances, and its verdict on it."""
    for txn, item in spool.commitments.of_instances(sops):
        when = datetime.fromtimestamp(txn.received_at).isoformat(sep=" ", timespec="seconds")
        print(
            f"  commitment {txn.transaction_uid} asked by {txn.calling_ae}@{txn.peer} at {when}:"
            f" {item.sop_instance_uid} {_verdict(txn, item)}, report {_state(txn)}"
            f"{_relayed(spool, txn, item.sop_instance_uid)}"
        )


def _relayed(spool: Spool, txn: Transaction, sop: str) -> str:
    """`; pacs committed` for each destination asked about this instance (answer: relayed)."""
    out = []
    for relay in spool.relays.of_transaction(txn.transaction_uid):
        for item in spool.relays.items(relay.relay_uid):
            if item.sop_instance_uid != sop:
                continue
            if relay.state != ANSWERED:
                out.append(f"{relay.destination} {relay.state}")
            else:
                said = "committed" if item.failure is None else f"failed {hex_code(item.failure)}"
                out.append(f"{relay.destination} {said}")
    return "".join(f"; {o}" for o in out)


def _verdict(txn: Transaction, item: Item) -> str:
    if txn.state == PENDING:
        return "not decided yet"
    return "committed" if item.failure is None else f"failed {hex_code(item.failure)}"


def _state(txn: Transaction) -> str:
    extra = f" ({txn.last_error})" if txn.last_error and txn.state != "reported" else ""
    return f"{txn.state}{extra}"
