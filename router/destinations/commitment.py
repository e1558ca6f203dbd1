"""The one timer that answers Storage Commitment requests, run by the forwarder process.

Each tick it looks at the transactions the receiving processes recorded
(`router.spool.commitments`): once every referenced instance is decided (committed, or
failed with its Failure Reason, or still undone at the deadline: 0x0110), the verdicts are
stored. While the request's association is open, its receiving process holds a lease on
the transaction and sends the N-EVENT-REPORT there (`router.receive.commitment`);
otherwise this timer sends it on a new association to the caller's address and
`commitment_port`, the router as requestor proposing the SCP role (role selection). With
`answer: relayed` an instance's verdict also waits for the destinations asked for their
own commitment (`router.destinations.relay`, whose timer runs beside this one). A
report that does not get through is retried with backoff until as long again as
`timeout` after the deadline, then abandoned (logged). Its state is the spool's: after a
restart or a kill -9 the same transactions are found and answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from router.config.model import Config
from router.destinations.relay import Relayer, commitment_destinations, settle
from router.destinations.ticker import Ticker
from router.observe import metrics
from router.rules.engine import commitment_port
from router.spool.commitments import Item, Transaction
from router.spool.database import Spool

log = logging.getLogger("router.commitment")

FIRST_RETRY = 10.0  # seconds before a failed report is tried again, doubling...
MAX_RETRY = 300.0  # ...up to this
REPORT_TIMEOUT = 30.0  # association set-up and the N-EVENT-REPORT's response
CONNECT_TIMEOUT = 10.0  # the TCP connection to the modality's commitment_port
# A transaction whose request's association renewed its lease this recently is reported
# on that association by the receiving process (router.receive.commitment), not here.
LEASE = 3.0
MIN_GAP = 0.05  # seconds between two looks when deliveries wake the timer


class Committer(Ticker):
    """Decides and reports due transactions every second and when a delivery finishes;
    `apply` follows reloads."""

    def __init__(self, spool: Spool, config: Config, resolve: Callable[[str], Path] = Path) -> None:
        super().__init__("commitment", log)
        self.spool = spool
        self.config = config
        self.resolve = resolve  # the rule file's relative paths (a destination's TLS files)
        self.relayer: Relayer | None = None  # with answer: relayed only
        spool.on_finished = self.nudge
        self._follow()

    def nudge(self) -> None:
        """A delivery finished: decide now (a transaction may wait for it), not at the tick.

        Asked of every delivery while storage commitment is on (another process records
        the transactions, so this one cannot tell cheaply which deliveries matter);
        `min_gap` bounds the looks."""
        if self.config.storage_commitment is not None:
            self.wake()

    def min_gap(self) -> float:
        """Woken by every delivery, the timer still looks at most 20 times a second."""
        return MIN_GAP

    def apply(self, config: Config, resolve: Callable[[str], Path] | None = None) -> None:
        """Use a reloaded rule file (callers' commitment_port, AE title) from the next tick."""
        self.config = config
        self.resolve = resolve or self.resolve
        self._follow()

    def _follow(self) -> None:
        """Run the relay timer while some destination is to be asked, with the same config."""
        if not commitment_destinations(self.config):
            if self.relayer is not None:
                self.relayer.stop()
                self.relayer = None
            return
        if self.relayer is None:
            self.relayer = Relayer(self.spool, self.config, self.wake, self.resolve)
            if not self.stopping and self.started:
                self.relayer.start()
        self.relayer.config = self.config
        self.relayer.resolve = self.resolve

    def start(self) -> None:
        """Start the timer, and the relay timer if there is one."""
        super().start()
        if self.relayer is not None:
            self.relayer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both timers after their tick under way."""
        if self.relayer is not None:
            self.relayer.stop(timeout)
        super().stop(timeout)

    def tick(self) -> None:
        """Decide what can be decided, send the reports due; update the gauges."""
        now = time.time()
        for txn in self.spool.commitments.due(now):
            if self.stopping:
                break
            if txn.state == "pending":
                items = self.spool.commitments.verdicts(txn, now)
                if items is not None and self.relayer is not None:
                    items = settle(self.spool, self.config, txn, items, now)
                if items is None:
                    continue
                event_type = 1 if all(i.failure is None for i in items) else 2
                self.spool.commitments.decide(txn.transaction_uid, items, event_type)
                if self.relayer is None:  # relayed no more: what it had opened is asked no more
                    self.spool.relays.close(txn.transaction_uid)
            else:
                items = self.spool.commitments.items(txn.transaction_uid)
                event_type = txn.event_type or 2
            self._report(txn, items, event_type, now)
        count, oldest = self.spool.commitments.open_counts()
        metrics.commitments_open(count, now - oldest if oldest else 0.0)

    def _report(self, txn: Transaction, items: Sequence[Item], event_type: int, now: float) -> None:
        if txn.lease_at is not None and now - txn.lease_at < LEASE:
            return  # its request's association is open: the receiving process reports there
        error = self._send(txn, items, event_type)
        if error is None:
            reported(self.spool, txn, items, event_type, "a new association")
            return
        give_up = txn.deadline + (txn.deadline - txn.received_at)
        delay = min(MAX_RETRY, FIRST_RETRY * 2 ** min(txn.attempts, 10))
        retry_at = now + delay if now + delay < give_up else None
        self.spool.commitments.report_failed(txn.transaction_uid, error, retry_at)
        if retry_at is None:
            metrics.commitment_finished("abandoned")
        log.warning(
            "storage commitment %s for %s@%s: report not delivered (%s), %s",
            txn.transaction_uid,
            txn.calling_ae,
            txn.peer,
            error,
            f"next attempt in {delay:.0f} s" if retry_at else "abandoned",
            extra={"event": "commitment-report-failed", "transaction": txn.transaction_uid},
        )

    def _send(self, txn: Transaction, items: Sequence[Item], event_type: int) -> str | None:
        """Send the N-EVENT-REPORT on a new association; None when acknowledged, else why."""
        port = commitment_port(self.config, txn.calling_ae, txn.peer)
        if port is None:
            return "the caller has no commitment_port in the rule file"
        ae = AE(ae_title=txn.called_ae or self.config.listen.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = REPORT_TIMEOUT
        ae.connection_timeout = CONNECT_TIMEOUT  # a host that drops SYNs: not the OS's 2 min
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        assoc = ae.associate(txn.peer, port, ae_title=txn.calling_ae, ext_neg=[role])
        if not assoc.is_established:
            return f"no association with {txn.calling_ae}@{txn.peer}:{port}"
        try:
            return send_report(assoc, txn, items, event_type)
        finally:
            if assoc.is_established:
                assoc.release()


def send_report(assoc: Any, txn: Transaction, items: Sequence[Item], event_type: int) -> str | None:
    """Send one N-EVENT-REPORT on `assoc`; None when acknowledged with 0x0000, else why not."""
    rsp, _ = assoc.send_n_event_report(
        report_dataset(txn.transaction_uid, items),
        event_type,
        StorageCommitmentPushModel,
        StorageCommitmentPushModelInstance,
    )
    code = getattr(rsp, "Status", None)
    if code is None:
        return "no N-EVENT-REPORT response"
    return None if code == 0 else f"N-EVENT-REPORT status 0x{int(code):04X}"


def reported(
    spool: Spool, txn: Transaction, items: Sequence[Item], event_type: int, via: str
) -> None:
    """Record, count and log a report the modality acknowledged."""
    spool.commitments.reported(txn.transaction_uid)
    metrics.commitment_finished("committed" if event_type == 1 else "failed")
    failed = [f" {i.sop_instance_uid}=0x{i.failure:04X}" for i in items if i.failure]
    log.info(
        "storage commitment %s for %s@%s reported on %s: %d committed, %d failed%s",
        txn.transaction_uid,
        txn.calling_ae,
        txn.peer,
        via,
        len(items) - len(failed),
        len(failed),
        "".join(failed)[:512],
        extra={"event": "commitment-report", "transaction": txn.transaction_uid},
    )


def report_dataset(transaction_uid: str, items: Sequence[Item]) -> Dataset:
    """The Event Information: the committed instances, and the failed ones with reasons."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    done, failed = [], []
    for item in items:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.sop_class_uid
        ref.ReferencedSOPInstanceUID = item.sop_instance_uid
        if item.failure is None:
            done.append(ref)
        else:
            ref.FailureReason = item.failure
            failed.append(ref)
    if done:
        ds.ReferencedSOPSequence = done
    if failed:
        ds.FailedSOPSequence = failed
    return ds
