"""`answer: relayed`: the router asks its `commitment: true` destinations for their own
Storage Commitment and commits to the modality only what they committed.

Once every instance of a modality's transaction has its local verdict (delivered,
stored), the commitment timer (`router.destinations.commitment`) calls `settle`: it opens
one relay per destination that got some of them (`router.spool.relays`, our own
Transaction UID) and waits. The `Relayer`, a timer of the forwarder, sends each due
relay's N-ACTION on an association of its own (`Sender.request_commitment`) and keeps it
REPORT_WAIT seconds for the N-EVENT-REPORT; a destination that reports on a new
association reaches the router's listener instead (`router.receive.relay_report`). Either
way `take_report` records the verdicts (durably, before the response) and the Relayer,
which watches for recorded reports, wakes the commitment timer: the modality's report
follows within a tick.

An N-ACTION not answered 0x0000 is asked again with the destination's `retry` backoff;
one answered but with no report after REASK_AFTER is asked again, as is every relay
waiting for a report after a restart. At most MAX_OPEN_RELAYS are open at once: a
transaction past that waits (its timeout still runs).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModelInstance

from router.config.destinations import DicomDestination
from router.config.model import Config
from router.destinations.dicom import Sender
from router.destinations.policy import backoff
from router.destinations.ticker import Ticker
from router.dicom import status
from router.errors import DimseRefused, ForwardError
from router.observe import metrics
from router.observe.ratelimit import RateLimitedLog
from router.spool.commitments import Item, Transaction
from router.spool.database import Spool
from router.spool.relays import ANSWERED, OPEN, Relay

log = logging.getLogger("router.commitment")
_repeats = RateLimitedLog(log)

REPORT_WAIT = 5.0  # seconds the N-ACTION's association waits for the report on it
REASK_AFTER = 600.0  # an N-ACTION answered but not reported this long: asked again
MAX_OPEN_RELAYS = 256  # relays asking or awaiting a report, all destinations together
MAX_PER_ASSOCIATION = 32  # N-ACTIONs one association carries
MAX_REPORT_ITEMS = 5000  # items of one N-EVENT-REPORT (as of an N-ACTION)
WATCH_EVERY = 0.1  # seconds between two looks for due relays and recorded reports


def commitment_destinations(config: Config) -> dict[str, DicomDestination]:
    """The destinations asked for their own commitment (none unless answer: relayed)."""
    if config.storage_commitment is None or config.storage_commitment.answer != "relayed":
        return {}
    return {
        name: dest
        for name, dest in config.destinations.items()
        if isinstance(dest, DicomDestination) and dest.commitment
    }


def destination_of(config: Config, calling_ae: str, peer: str) -> str | None:
    """The commitment destination this association comes from (AE title and host), if any."""
    for name, dest in commitment_destinations(config).items():
        if dest.ae_title == calling_ae and _same_host(dest.host, peer):
            return name
    return None


def _same_host(host: str, peer: str) -> bool:
    if host == peer:
        return True
    try:
        return peer in {str(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False


# --- the commitment timer's side --------------------------------------------------------


def settle(
    spool: Spool, config: Config, txn: Transaction, items: list[Item], now: float
) -> list[Item] | None:
    """The verdicts once the destinations asked have answered (or the deadline passed),
    None meanwhile; opens the transaction's relays the first time."""
    relays = spool.relays.of_transaction(txn.transaction_uid)
    if not relays:
        committed = {i.sop_instance_uid: i for i in items if i.failure is None}
        names = sorted(commitment_destinations(config))
        targets = spool.relays.delivered_to(list(committed), names)
        if not targets:
            return items  # nothing went to a destination that is asked
        if now >= txn.deadline:  # never asked: not committed there
            asked = {sop for sops in targets.values() for sop in sops}
            return [_failed(i) if i.sop_instance_uid in asked else i for i in items]
        plan = [
            (generate_uid(), name, [committed[sop] for sop in sops])
            for name, sops in sorted(targets.items())
        ]
        try:
            spool.relays.open(txn.transaction_uid, plan, MAX_OPEN_RELAYS, now)
        except OverflowError:
            _repeats.warning(
                "relays full",
                "storage commitment %s: %d relays already open (the most), it waits",
                txn.transaction_uid,
                MAX_OPEN_RELAYS,
                extra={"event": "commitment-relays-full"},
            )
        return None
    if now < txn.deadline and any(r.state in OPEN for r in relays):
        return None
    failures: dict[str, int] = {}
    for relay in relays:
        answered = relay.state == ANSWERED
        for item in spool.relays.items(relay.relay_uid):
            failure = item.failure if answered else status.PROCESSING_FAILURE
            if failure is not None:
                failures.setdefault(item.sop_instance_uid, failure)
        if relay.state in OPEN:
            metrics.commitment_relay("expired")
    spool.relays.close(txn.transaction_uid)
    return [
        i if i.failure is not None or i.sop_instance_uid not in failures
        else Item(i.sop_class_uid, i.sop_instance_uid, failures[i.sop_instance_uid])
        for i in items
    ]  # fmt: skip


def _failed(item: Item) -> Item:
    return Item(item.sop_class_uid, item.sop_instance_uid, status.PROCESSING_FAILURE)


# --- the reports, wherever they arrive -----------------------------------------------------


def take_report(spool: Spool, event: Event, destination: str | None, via: str) -> Dataset:
    """Record a destination's N-EVENT-REPORT (committed to the spool database before the
    response) and return the response; `destination`: the one the association is from
    (None: a peer that is no commitment destination). Never raises."""
    assoc = event.assoc
    who = f"{assoc.requestor.ae_title.strip()}@{assoc.requestor.address}"
    if assoc.is_requestor:
        who = f"{assoc.acceptor.ae_title.strip()}@{assoc.acceptor.address}"
    uid = "?"
    rsp = Dataset()
    try:
        if destination is None:
            raise DimseRefused(status.UNRECOGNIZED_OPERATION, "not a commitment destination")
        uid, event_type, verdicts = _parse(event)
        relay = spool.relays.find(uid)
        if relay is None or relay.destination != destination:
            raise DimseRefused(status.INVALID_ARGUMENT, "unknown Transaction UID")
        fresh = spool.relays.answer(uid, event_type, verdicts)
    except DimseRefused as exc:
        _repeats.warning(
            f"n-event-report {who} 0x{exc.code:04X}",
            "N-EVENT-REPORT storage commitment from %s on %s transaction=%s status=0x%04X (%s)",
            who,
            via,
            uid[:64],
            exc.code,
            exc,
            extra={"event": "commitment-relay-report", "status": exc.code},
        )
        rsp.Status = exc.code
        rsp.ErrorComment = str(exc)[:64]
        return rsp
    except Exception as exc:  # a locked database, pydicom decoding lazily: one line
        log.warning("N-EVENT-REPORT from %s on %s: cannot record (%s)", who, via, exc)
        rsp.Status = status.PROCESSING_FAILURE
        rsp.ErrorComment = "cannot record"
        return rsp
    failed = sum(1 for f in verdicts.values() if f is not None)
    if fresh:
        metrics.commitment_relay("committed" if event_type == 1 and not failed else "failed")
    log.info(
        "storage commitment relay %s: %s reported on %s event type %d, %d committed, %d failed%s",
        uid,
        destination,
        via,
        event_type,
        len(verdicts) - failed,
        failed,
        "" if fresh else " (already recorded, ignored)",
        extra={"event": "commitment-relay-report", "transaction": uid},
    )
    rsp.Status = status.SUCCESS
    return rsp


def _parse(event: Event) -> tuple[str, int, dict[str, int | None]]:
    request = event.request
    assert isinstance(request, N_EVENT_REPORT)  # the only event this handles
    if str(request.AffectedSOPInstanceUID) != str(StorageCommitmentPushModelInstance):
        raise DimseRefused(status.INVALID_OBJECT_INSTANCE, "not the well-known instance")
    event_type = int(request.EventTypeID or 0)
    if event_type not in (1, 2):
        raise DimseRefused(status.NO_SUCH_EVENT_TYPE, f"Event Type ID {event_type}")
    try:
        ds = event.event_information
        uid = str(ds.get("TransactionUID", "") or "")[:64]
        done = ds.get("ReferencedSOPSequence") or []
        failed = ds.get("FailedSOPSequence") or []
        if len(done) + len(failed) > MAX_REPORT_ITEMS:
            raise DimseRefused(status.RESOURCE_LIMITATION, f"more than {MAX_REPORT_ITEMS} items")
        verdicts: dict[str, int | None] = {}
        for item in failed:
            reason = int(item.get("FailureReason", status.PROCESSING_FAILURE) or 0)
            reason = reason if reason in status.RELAYED_REASONS else status.PROCESSING_FAILURE
            verdicts[str(item.get("ReferencedSOPInstanceUID", ""))] = reason
        for item in done:
            verdicts.setdefault(str(item.get("ReferencedSOPInstanceUID", "")), None)
    except DimseRefused:
        raise
    except Exception as exc:
        raise DimseRefused(status.PROCESSING_FAILURE, f"cannot decode: {exc}") from exc
    if not uid:
        raise DimseRefused(status.INVALID_ARGUMENT, "no Transaction UID")
    return uid, event_type, verdicts


# --- the forwarder's timer that asks ------------------------------------------------------


class Relayer(Ticker):
    """Sends the due N-ACTIONs (one thread per destination at a time) and calls `on_report`
    when a report was recorded, by whichever process."""

    def __init__(
        self,
        spool: Spool,
        config: Config,
        on_report: Callable[[], None],
        resolve: Callable[[str], Path],
    ) -> None:
        super().__init__("commitment-relay", log)
        self.spool = spool
        self.config = config
        self.resolve = resolve
        self._on_report = on_report
        self._asking: dict[str, threading.Thread] = {}
        self._last_report = spool.relays.last_answer()
        again = spool.relays.reask(time.time())
        if again:
            log.info("storage commitment: %d relays without a report asked again", again)

    def interval(self) -> float:
        """A short look: a recorded report must reach the commitment timer at once."""
        return WATCH_EVERY

    def tick(self) -> None:
        """Wake the commitment timer on a new report; start asking the due relays."""
        last = self.spool.relays.last_answer()
        if last != self._last_report:
            self._last_report = last
            self._on_report()
        now = time.time()
        due: dict[str, list[Relay]] = {}
        for relay in self.spool.relays.due(now, now - REASK_AFTER):
            due.setdefault(relay.destination, []).append(relay)
        wanted = commitment_destinations(self.config)
        for name, relays in due.items():
            running = self._asking.get(name)
            if running is not None and running.is_alive():
                continue
            dest = wanted.get(name)
            if dest is None:
                for relay in relays:  # removed, or commitment: false now: wait for it
                    self.spool.relays.ask_failed(
                        relay.relay_uid, "not a commitment: true destination", now + 60
                    )
                continue
            thread = threading.Thread(
                target=self._ask,
                args=(name, dest, relays[:MAX_PER_ASSOCIATION]),
                name=f"commitment-relay-{name}",
                daemon=True,
            )
            self._asking[name] = thread
            thread.start()

    def _ask(self, name: str, dest: DicomDestination, relays: Sequence[Relay]) -> None:
        """One association to `name`: the N-ACTIONs, then a wait for reports on it."""
        waiting = {r.relay_uid for r in relays}
        attempts = {r.relay_uid: r.attempts for r in relays}
        requests = [(r.relay_uid, self._refs(r.relay_uid)) for r in relays]

        def answered(uid: str, error: str | None) -> None:
            if error is None:
                self.spool.relays.asked(uid, time.time())
                log.info(
                    "storage commitment relay %s: %s asked for %d instances",
                    uid,
                    name,
                    len(dict(requests)[uid]),
                    extra={"event": "commitment-relay-asked", "transaction": uid},
                )
                return
            waiting.discard(uid)
            self._failed(name, dest, uid, attempts[uid], error)

        def on_report(event: Event) -> tuple[Dataset, None]:
            rsp = take_report(self.spool, event, name, "the N-ACTION's association")
            if rsp.Status == 0:
                self._on_report()
            return rsp, None

        def reported() -> bool:  # on this association or on one the destination opened
            if waiting:
                still = self.spool.relays.still_open(list(waiting))
                if still != waiting:  # recorded by the listener: no need to wait for a tick
                    waiting.intersection_update(still)
                    self._on_report()
            return not waiting

        sender = Sender(name, dest, self.config.listen.ae_title, resolve=self.resolve)
        try:
            sender.request_commitment(requests, answered, on_report, reported, REPORT_WAIT)
        except ForwardError as exc:
            for uid in list(waiting):
                self._failed(name, dest, uid, attempts[uid], str(exc))
        except Exception:  # a bug: the relays are asked again after their backoff
            log.exception("storage commitment: asking %s failed", name)
            for uid in list(waiting):
                self._failed(name, dest, uid, attempts[uid], "internal error")

    def _refs(self, relay_uid: str) -> list[tuple[str, str]]:
        return [(i.sop_class_uid, i.sop_instance_uid) for i in self.spool.relays.items(relay_uid)]

    def _failed(self, name: str, dest: DicomDestination, uid: str, attempts: int, why: str) -> None:
        delay = backoff(attempts + 1, dest.retry)
        self.spool.relays.ask_failed(uid, why, time.time() + delay)
        metrics.commitment_relay("ask_failed")
        _repeats.warning(
            f"relay {name} {why}",
            "storage commitment relay %s: %s not asked (%s), next attempt in %.0f s",
            uid,
            name,
            why,
            delay,
            extra={"event": "commitment-relay-failed", "transaction": uid},
        )
