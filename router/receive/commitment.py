"""The Storage Commitment Push Model SCP side: N-ACTION requests checked, recorded, answered.

The handler answers at once: 0x0000 once the transaction is in queue.db (committed before
the response), a failure status otherwise, one log line either way. The verdicts come
later from the forwarder's timer (`router.destinations.commitment`); the N-EVENT-REPORT
from this process's watcher thread on the request's association while it is open, else
from that timer on a new association to the caller's `commitment_port`; never from this
handler: a report sent from here would reach the modality before the N-ACTION response.

Bounds a sender cannot pass: the N-ACTION dataset (netlayer's MAX_MEMORY_DATASET, 1 MiB,
else the association is aborted), MAX_ITEMS referenced instances per request, and
MAX_OPEN_PER_CALLER transactions not yet reported per calling AE title.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from router.config.model import Config
from router.destinations.commitment import reported, send_report
from router.destinations.relay import destination_of
from router.dicom import status
from router.errors import DimseRefused
from router.net import netlayer
from router.observe.ratelimit import RateLimitedLog
from router.receive.relay_report import grant_scp_role
from router.rules.engine import commitment_port
from router.spool.commitments import DuplicateTransaction, Item, Transaction
from router.spool.database import Spool

log = logging.getLogger("router.scp")
_repeats = RateLimitedLog(log)

SOP_CLASS = str(StorageCommitmentPushModel)
# 5,000 items of ~120 bytes fit in netlayer's 1 MiB bound on an N-ACTION's dataset: a
# request past MAX_ITEMS gets 0x0213, one past 1 MiB an abort.
MAX_ITEMS = 5000
MAX_OPEN_PER_CALLER = 64  # transactions not yet reported, per calling AE title
REQUEST_ACTION_TYPE = 1  # PS3.4 J.3.2: Request Storage Commitment
WATCH_EVERY = 0.5  # seconds between two looks for the verdicts of an open association


def admit_context(assoc: Any, config: Config, calling: str, peer: str) -> None:
    """In EVT_REQUESTED: drop the Storage Commitment context for a caller without a
    commitment_port (or with no storage_commitment section), logging one line; grant a
    commitment destination the SCP role it proposes, for its report."""
    if destination_of(config, calling, peer) is not None:
        grant_scp_role(assoc, SOP_CLASS)  # it reports on this association (answer: relayed)
        return
    if commitment_port(config, calling, peer) is not None:
        return
    requested = assoc.requestor.primitive.presentation_context_definition_list
    if not any(str(c.abstract_syntax) == SOP_CLASS for c in requested):
        return
    contexts = assoc.acceptor.supported_contexts
    assoc.acceptor.supported_contexts = [c for c in contexts if c.abstract_syntax != SOP_CLASS]
    _repeats.warning(
        f"commitment {calling}@{peer}",
        "storage commitment from %s@%s refused (context rejected): %s",
        calling,
        peer,
        "no storage_commitment section"
        if config.storage_commitment is None
        else "the caller has no commitment_port",
        extra={"event": "commitment-refused"},
    )


class CommitmentSCP:
    """The EVT_N_ACTION handler: records each well-formed request in the spool."""

    def __init__(self, spool: Spool, current: Callable[[], Config]) -> None:
        self._spool = spool
        self._current = current

    def on_action(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """Answer an N-ACTION; never raises."""
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        peer = assoc.requestor.address
        uid = "?"
        try:
            txn, items = self._parse(event, calling, peer)
            uid = txn.transaction_uid
            self._record(txn, items)
            _watcher(self._spool, assoc).add(uid)
        except DimseRefused as exc:
            _repeats.warning(
                f"n-action {calling}@{peer} 0x{exc.code:04X}",
                "N-ACTION storage commitment from %s@%s transaction=%s status=0x%04X (%s)",
                calling,
                peer,
                netlayer.escaped(uid),
                exc.code,
                exc,
                extra={"event": "commitment-request", "status": exc.code},
            )
            rsp = Dataset()
            rsp.Status = exc.code
            rsp.ErrorComment = str(exc)[:64]
            return rsp, None
        log.info(
            "N-ACTION storage commitment from %s@%s transaction=%s items=%d status=0x0000",
            calling,
            peer,
            uid,
            len(items),
            extra={"event": "commitment-request", "status": 0, "transaction": uid},
        )
        return status.SUCCESS, None

    def _parse(self, event: Event, calling: str, peer: str) -> tuple[Transaction, list[Item]]:
        request = event.request
        assert isinstance(request, N_ACTION)  # the only event this handles
        if str(request.RequestedSOPInstanceUID) != str(StorageCommitmentPushModelInstance):
            raise DimseRefused(
                status.INVALID_OBJECT_INSTANCE,
                "Requested SOP Instance is not the well-known instance",
            )
        if request.ActionTypeID != REQUEST_ACTION_TYPE:
            raise DimseRefused(status.NO_SUCH_ACTION, f"Action Type ID {request.ActionTypeID}")
        try:
            ds = event.action_information
            uid = str(ds.get("TransactionUID", "") or "")
            refs = ds.get("ReferencedSOPSequence")
            if not uid:
                raise DimseRefused(status.MISSING_ATTRIBUTE, "no Transaction UID")
            if refs is None or len(refs) == 0:
                raise DimseRefused(status.MISSING_ATTRIBUTE, "no Referenced SOP Sequence items")
            if len(refs) > MAX_ITEMS:
                raise DimseRefused(
                    status.RESOURCE_LIMITATION, f"{len(refs)} items: at most {MAX_ITEMS}"
                )
            items = [_item(ref) for ref in refs]
        except DimseRefused:
            raise
        except Exception as exc:  # pydicom decodes lazily: any malformed element lands here
            raise DimseRefused(status.PROCESSING_FAILURE, f"cannot decode: {exc}") from exc
        config = self._current()
        timeout = config.storage_commitment.timeout if config.storage_commitment else 0.0
        now, called = time.time(), assoc_called(event)
        deadline = now + timeout
        txn = Transaction(
            uid[:64], calling, called, peer, now, deadline, "", None, 0, now, None, lease_at=now
        )
        return txn, items

    def _record(self, txn: Transaction, items: list[Item]) -> None:
        try:
            self._spool.commitments.record(txn, items, MAX_OPEN_PER_CALLER)
        except DuplicateTransaction:
            raise DimseRefused(status.INVALID_ARGUMENT, "duplicate Transaction UID") from None
        except OverflowError:
            raise DimseRefused(
                status.RESOURCE_LIMITATION,
                f"{MAX_OPEN_PER_CALLER} transactions of this caller still open",
            ) from None
        except sqlite3.Error as exc:
            raise DimseRefused(status.PROCESSING_FAILURE, f"cannot record: {exc}") from exc


def _item(ref: Dataset) -> Item:
    sop_class = str(ref.get("ReferencedSOPClassUID", "") or "")
    sop_instance = str(ref.get("ReferencedSOPInstanceUID", "") or "")
    if not sop_class or not sop_instance:
        raise DimseRefused(
            status.MISSING_ATTRIBUTE_VALUE, "an item without its SOP Class/Instance UID"
        )
    return Item(sop_class[:64], sop_instance[:64])


def assoc_called(event: Event) -> str:
    """The AE title the modality called the router by."""
    primitive = event.assoc.requestor.primitive
    return primitive.called_ae_title.strip() if primitive else ""


class _Watcher:
    """One thread per association that asked: while it is open, it keeps its transactions'
    lease (so the forwarder leaves them alone) and sends each decided one's report on it.

    It looks first WATCH_EVERY after the N-ACTION handler returned, so a report can never
    precede its N-ACTION response. Once the association is gone (or a send fails) the
    leases are dropped and the forwarder reports on a new association.
    """

    def __init__(self, spool: Spool, assoc: Any) -> None:
        self._spool = spool
        self._assoc = assoc
        self._lock = threading.Lock()
        self._uids: list[str] = []
        # The forwarder may report on a new association as soon as this one has ended,
        # not a WATCH_EVERY later.
        netlayer.when_done(assoc, self._release)
        threading.Thread(target=self._run, name="commitment-watch", daemon=True).start()

    def add(self, uid: str) -> None:
        with self._lock:
            self._uids.append(uid)

    def _run(self) -> None:
        try:
            while self._assoc.is_established and self._tick():
                pass
        except Exception:  # a bug or a locked database: the forwarder takes over
            log.exception("storage commitment: reporting on the request's association failed")
        self._release()

    def _release(self) -> None:
        """Drop the leases of the transactions not reported here (twice is harmless)."""
        with self._lock:
            uids = list(self._uids)
        if uids:
            self._spool.commitments.release(uids)

    def _tick(self) -> bool:
        """Renew the leases and send what is decided; False to stop (a send failed)."""
        time.sleep(WATCH_EVERY)
        with self._lock:
            uids = list(self._uids)
        if not uids or not self._assoc.is_established:
            return True
        for txn in self._spool.commitments.watch(uids, time.time()):
            items = self._spool.commitments.items(txn.transaction_uid)
            event_type = txn.event_type or 2
            if send_report(self._assoc, txn, items, event_type) is not None:
                return False
            reported(self._spool, txn, items, event_type, "its request's association")
            with self._lock:
                self._uids.remove(txn.transaction_uid)
        return True


_watchers_lock = threading.Lock()


def _watcher(spool: Spool, assoc: Any) -> _Watcher:
    """The association's watcher, started with its first accepted N-ACTION."""
    with _watchers_lock:
        watcher: _Watcher | None = getattr(assoc, "router_commitment_watcher", None)
        if watcher is None:
            watcher = _Watcher(spool, assoc)
            assoc.router_commitment_watcher = watcher
        return watcher
