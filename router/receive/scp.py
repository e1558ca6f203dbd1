"""The Storage SCP: pynetdicom set up for a router, and thin event handlers.

C-STORE contract: the instance arrives chunked into a temporary file in the spool's
`incoming/` folder (memory stays flat whatever its size); the handler hands that file and
the association's facts to `Pipeline.process`, logs one line, and answers the status it
returns (see `router.actions.pipeline` for every status and when). The handler never raises.

Every storage SOP class is accepted, known, unknown or private, with the first transfer
syntax the sender proposes; C-ECHO is answered. `callers` is enforced when the
association is requested. Each accepted socket gets TCP_NODELAY (Nagle costs ~40 ms per
instance) and a timeout so that a sender stalling mid-transfer is dropped.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.actions.pipeline import Outcome, Pipeline, Received
from router.config.listen import Listen
from router.config.model import Config
from router.destinations.relay import destination_of
from router.dicom import status
from router.dicom.sopclass import sop_class_name
from router.errors import StartupError
from router.net import netlayer
from router.net.admission import (
    REJECT_BUSY,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    Budget,
    caller_allowed,
)
from router.observe import metrics
from router.observe.ratelimit import RateLimitedLog
from router.receive import commitment as stgcmt
from router.receive.relay_report import RelayReports
from router.spool.journal import Journal

log = logging.getLogger("router.scp")
_repeats = RateLimitedLog(log)
REJECT_SENT_WAIT = 1.0  # seconds an A-ASSOCIATE-RJ may take to be sent before the close
# Series and studies one association's release may complete (studies.on_release): a
# sender's memory here is bounded; those beyond complete after their quiet time.
RELEASE_UNITS_MAX = 256


def _reject(assoc: Any, reason: tuple[int, int, int]) -> None:
    """Send an A-ASSOCIATE-RJ and wait until it is on the wire (bounded).

    pynetdicom closes the connection once this handler returns: the peer must have the
    reject before that, or it sees an abort. The DUL sends the PDU and then enters Sta13
    (awaiting the close), so that state is the event to wait for. The caller logged the
    refusal: that is the association's one line (pynetdicom sets `is_rejected` only after
    this handler, so the close handler could otherwise call it dropped).
    """
    assoc.router_logged = True
    assoc.acse.send_reject(*reason)
    deadline = time.monotonic() + REJECT_SENT_WAIT
    while assoc.dul.state_machine.current_state != "Sta13" and time.monotonic() < deadline:
        time.sleep(0.001)


def _on_accepted(event: Event) -> None:
    assoc = event.assoc
    metrics.association_accepted(assoc, assoc.requestor.ae_title.strip())
    netlayer.when_done(assoc, lambda: metrics.association_closed(assoc))


def _on_rejected(event: Event) -> None:
    rj = event.assoc.acceptor.primitive
    metrics.association_rejected(
        metrics.reject_reason(rj.result_source, rj.diagnostic) if rj else "other"
    )


def _log_close(event: Event) -> None:
    assoc = event.assoc
    if assoc.is_released or assoc.is_rejected or getattr(assoc, "router_logged", False):
        return  # nothing to say, or router.net.netlayer said it
    primitive = assoc.requestor.primitive
    calling = primitive.calling_ae_title.strip() if primitive else "?"
    why = "aborted" if assoc.is_aborted else "dropped (stalled, timed out or malformed)"
    # Rate limited: a flood of port probes (no A-ASSOCIATE-RQ, any address) is one cause,
    # an association that did associate is its own, by peer.
    peer = f"{calling}@{assoc.requestor.address}" if primitive else "before A-ASSOCIATE-RQ"
    _repeats.warning(
        f"{why} {peer}",
        "association from %s@%s %s",
        calling,
        assoc.requestor.address,
        why,
        extra={"event": "association-dropped"},
    )


class StorageSCP:
    """The listening AE; reads the current config through `current` for every event."""

    def __init__(
        self,
        listen: Listen,
        pipeline: Pipeline,
        current: Callable[[], Config],
        tls: ssl.SSLContext | None = None,
        journal: Journal | None = None,
        *,
        reuse_port: bool = False,
        budget: Budget | None = None,
        on_release: Callable[[set[tuple[str, str]]], None] | None = None,
        commitment: stgcmt.CommitmentSCP | None = None,
        relay_reports: RelayReports | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._on_release = on_release  # studies.on_release: the units a released assoc sent
        self._journal = journal
        self._budget = budget
        self._current = current
        self.ae = netlayer.RouterAE(ae_title=listen.ae_title)
        self.ae.maximum_associations = listen.max_associations
        self.ae.maximum_pdu_size = listen.max_pdu
        self.ae.network_timeout = listen.network_timeout
        # Also how long pynetdicom keeps a broken association waiting for the transport
        # to close: never longer than a stalled sender is given.
        self.ae.acse_timeout = min(10.0, listen.network_timeout)
        self.ae.dimse_timeout = listen.network_timeout
        self.ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, _log_close),
            (evt.EVT_ACCEPTED, _on_accepted),
            (evt.EVT_REJECTED, _on_rejected),
            (evt.EVT_RELEASED, self._on_released),
        ]
        if commitment is not None:  # offered to callers with a commitment_port only
            self.ae.add_supported_context(stgcmt.SOP_CLASS)
            handlers.append((evt.EVT_N_ACTION, commitment.on_action))
        if relay_reports is not None:  # from commitment: true destinations (answer: relayed)
            handlers.append((evt.EVT_N_EVENT_REPORT, relay_reports.on_report))
        self._commitment = commitment
        try:
            server = self.ae.make_server(
                (listen.host, listen.port),
                evt_handlers=handlers,
                server_class=_server_class(reuse_port),
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on {listen.host}:{listen.port}: {exc}") from exc
        assert isinstance(server, netlayer.RouterServer)
        self.server = server
        self.server.stall_timeout = listen.network_timeout
        self.server.tls = tls
        if listen.proxy_protocol is not None:
            self.server.proxy_trusted = tuple(listen.proxy_protocol.trusted)
        # The accept loop checks for shutdown every 0.1 s (socketserver: 0.5 s), so SIGTERM
        # stops accepting at once; ten idle selects a second cost nothing measurable.
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.1,), name="scp-accept", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Start accepting associations."""
        self._thread.start()

    def stop_accepting(self) -> None:
        """Close the listening socket; running associations go on, idle connections end."""
        if self._thread.is_alive():  # shutdown() waits for serve_forever: only if it runs
            self.server.shutdown()
        self.server.server_close()
        self._wake_unrequested()

    def _requested(self) -> list[Any]:
        """Associations whose A-ASSOCIATE-RQ arrived: those may carry C-STOREs."""
        return [a for a in self.server.connections() if netlayer.requested(a)]

    def _wake_unrequested(self) -> None:
        # A connection that never sent an A-ASSOCIATE-RQ (a TCP probe, a stalled client)
        # sits in pynetdicom's wait for one, and its (non-daemon) DUL thread keeps the
        # process alive: break its read, stop the DUL, and wake the wait as a timeout would.
        for assoc in self.server.connections():
            if not netlayer.requested(assoc):
                netlayer.shutdown_socket(assoc)
                assoc.dul.kill_dul()
                assoc.dul.to_user_queue.put(None)  # as a timeout

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for running associations to end; True when none is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._requested():
                return True
            time.sleep(0.05)
        return not self._requested()

    def abort_all(self) -> None:
        """Abort whatever association is still running, breaking any read it is blocked in."""
        for assoc in self._requested():
            threading.Thread(target=assoc.abort, daemon=True).start()
        time.sleep(0.5)  # the A-ABORTs go out first
        for assoc in self._requested():
            netlayer.shutdown_socket(assoc)
        self._wake_unrequested()

    def _on_requested(self, event: Event) -> None:
        primitive = event.assoc.requestor.primitive
        assert primitive is not None  # set once the A-ASSOCIATE-RQ arrived
        calling = primitive.calling_ae_title.strip()
        peer = event.assoc.requestor.address
        hostile: dict[str, bytes] = getattr(event.assoc, "hostile_ae_titles", {})
        for what, reason in (("calling", REJECT_CALLING_AE), ("called", REJECT_CALLED_AE)):
            if what in hostile:
                _repeats.warning(
                    f"hostile AE title from {peer}",
                    "association from %s rejected: %s AE title %s is not of the AE VR",
                    peer,
                    what,
                    netlayer.escaped(hostile[what]),
                    extra={"event": "ae-title-rejected"},
                )
                _reject(event.assoc, reason)
                return
        config = self._current()
        allowed = caller_allowed(config, calling, peer)
        # A commitment destination reports on an association of its own (answer: relayed);
        # not in callers, it may do only that (its C-STOREs are refused).
        if not allowed and destination_of(config, calling, peer):
            event.assoc.router_reports_only = True  # type: ignore[attr-defined]
        elif not allowed:
            # Rate limited per address: a sender retrying in a loop is a burst and a summary.
            _repeats.warning(
                f"callers {peer}",
                "association from %s@%s rejected: calling AE not in callers",
                calling,
                peer,
                extra={"event": "caller-rejected"},
            )
            metrics.association_rejected("callers")
            _reject(event.assoc, REJECT_CALLING_AE)
            return
        if self._budget is not None:
            if not self._budget.take():
                _repeats.warning(
                    "max_associations",
                    "association from %s@%s rejected: %d associations (max_associations)",
                    calling,
                    peer,
                    self._budget.limit,
                    extra={"event": "busy-rejected"},
                )
                metrics.association_rejected("limit")
                _reject(event.assoc, REJECT_BUSY)
                return
            netlayer.when_done(event.assoc, self._budget.give)
        if self._commitment is not None:
            stgcmt.admit_context(event.assoc, self._current(), calling, peer)

    def _on_store(self, event: Event) -> Dataset | int:
        request = event.request
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert isinstance(request, C_STORE) and primitive is not None
        if getattr(assoc, "router_reports_only", False):
            _repeats.warning(
                f"reports only {assoc.requestor.address}",
                "C-STORE from %s@%s refused (0x0124): a commitment destination not in callers",
                assoc.requestor.ae_title.strip(),
                assoc.requestor.address,
                extra={"event": "caller-rejected"},
            )
            return status.NOT_AUTHORIZED
        received = Received(
            path=event.dataset_path,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            calling_ae=assoc.requestor.ae_title.strip(),
            called_ae=primitive.called_ae_title.strip(),
            peer=assoc.requestor.address,
            transfer_syntax=str(event.context.transfer_syntax),
            receive_error=getattr(request, "receive_error", None),
        )
        outcome = self._pipeline.process(received)
        self._log_store(received, outcome)
        if outcome.collected:  # what on_release completes when this association is released
            seen: set[tuple[str, str]] = getattr(assoc, "router_units", set())
            for unit in (("study", outcome.study_uid), ("series", outcome.series_uid)):
                if len(seen) < RELEASE_UNITS_MAX:
                    seen.add(unit)
            assoc.router_units = seen  # type: ignore[attr-defined]
        if not (outcome.comment and outcome.status):
            return outcome.status  # pynetdicom takes a bare status: no Dataset to build
        rsp = Dataset()
        rsp.Status = outcome.status
        rsp.ErrorComment = outcome.comment[:64]
        return rsp

    def _on_released(self, event: Event) -> None:
        """A released (not aborted) association: its collected units may be complete."""
        seen = getattr(event.assoc, "router_units", None)
        if seen and self._on_release is not None:
            self._on_release(seen)

    def _log_store(self, received: Received, outcome: Outcome) -> None:
        """The C-STORE's log line, stamped now and written after the response."""
        if not log.isEnabledFor(logging.INFO):
            return
        record = log.makeRecord(
            log.name,
            logging.INFO,
            __file__,
            0,
            "C-STORE from %s@%s %s %s rule=%s actions=%s status=0x%04X config=%s%s",
            (
                received.calling_ae,
                received.peer,
                sop_class_name(received.sop_class_uid),
                received.sop_instance_uid,
                outcome.rule,
                ",".join(outcome.actions) or "-",
                outcome.status,
                outcome.config_version,
                f" ({outcome.comment})" if outcome.comment else "",
            ),
            None,
            extra={"event": "c-store", "outcome": outcome, "received": received},
        )
        if self._journal is None:
            log.handle(record)
        else:
            self._journal.emit(log, record)


def _server_class(reuse_port: bool) -> type[netlayer.RouterServer]:
    return type("Server", (netlayer.RouterServer,), {"reuse_port": reuse_port})
