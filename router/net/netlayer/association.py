"""The association reactor, the association limit and the server (changes 6, 7, 11 and 13)."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from router.errors import ProtocolError
from router.net.netlayer import limits, proxied
from router.net.netlayer.dimse import RouterDIMSE
from router.net.netlayer.unassociated import Unassociated

_LOGGER = logging.getLogger("pynetdicom.association")  # off in the router (CRITICAL)
ABORT_WAIT = 0.1  # upstream's fixed sleep, now the longest wait for the thread to end

# --------------------------------------------------------------------------- association


class RouterAssociation(Association):
    """pynetdicom's Association with an event-driven reactor (change 6)."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        self._work = threading.Event()
        self._when_done: list[Callable[[], object]] = []
        super().__init__(ae, mode)

    @property
    def network_timeout(self) -> float | None:
        """The network timeout (in seconds); setting it wakes the reactor to apply it."""
        return self._network_timeout

    @network_timeout.setter
    def network_timeout(self, value: float | None) -> None:
        with self.lock:
            self.dul._idle_timer.timeout = value
            self._network_timeout = value
        self.kick()  # the reactor may be waiting out the old timeout

    def kick(self) -> None:
        """Wake the reactor: a message, a release or abort, or the DUL's end."""
        self._work.set()

    def kill(self) -> None:
        """Kill the association thread (and wake its reactor to notice)."""
        self._work.set()
        super().kill()

    def _abort_blocking(self, block: bool = True) -> None:
        """Upstream's abort (change 11) without its fixed 0.1 s sleep at the end."""
        if self._sent_abort or self.is_released:
            return
        self._sent_abort = True
        self._reactor_checkpoint.set()
        _LOGGER.info("Aborting Association")
        self.acse.send_abort(0x00)
        evt.trigger(self, evt.EVT_ABORTED, {})
        if block is False:
            return
        self.kill()
        with contextlib.suppress(Exception):
            cast(Any, self.dul.socket)._shutdown_socket()
        # Upstream slept 0.1 s "to ensure everything shuts down": the DUL is stopped by
        # kill(); what may still run is this association's own thread, so wait for that
        # (a requestor whose connection was refused never started it: no wait at all).
        if self.is_alive() and threading.current_thread() is not self:
            self.join(ABORT_WAIT)

    def run_reactor(self) -> None:
        """The association thread: abort rather than die when negotiation raises."""
        try:
            super().run_reactor()
        except Exception as exc:
            limits.warn(self, "association with %s aborted: %s", limits.reason(exc))
            with contextlib.suppress(Exception):
                self.abort()
            self.kill()
            if self._server is not None and self.dul.socket and self.dul.socket.socket:
                self._server.shutdown_request(self.dul.socket.socket)
        finally:
            cast(RouterDIMSE, self.dimse).discard_unserved()
            for done in self._when_done:
                try:
                    done()
                except Exception as exc:  # a bug in a callback must not lose the others
                    limits.log.error("association end hook failed: %s", exc)

    def when_done(self, callback: Callable[[], object]) -> None:
        """Run `callback` when this association's thread ends, however it ends.

        pynetdicom's EVT_CONN_CLOSE is not fired on every path (an abort outside the
        state machine, a killed DUL), so counts kept per association are released here.
        """
        self._when_done.append(callback)

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                continue  # paused again before we marked ourselves running: yield to it
            self._work.clear()
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                continue
            if self.is_established and self.acse.is_release_requested():
                # Marked released before the A-RELEASE-RP is queued (upstream: after): the
                # DUL thread sends it, the peer closes, and EVT_CONN_CLOSE fires in that
                # thread, which could run before this one set the flag (2-20 % of clean
                # releases were then logged as dropped).
                self.is_released = True
                self.is_established = False
                self.acse.send_release(is_response=True)
                _LOGGER.info("Association Released")  # pynetdicom's own log lines, as upstream
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                _LOGGER.info("Association Aborted")
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                _LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
            timer = self.dul._idle_timer
            wait = (
                limits.IDLE_WAKE
                if timer.timeout is None
                else min(limits.IDLE_WAKE, timer.remaining)
            )
            self._is_paused = True  # waiting consumes nothing: a pauser may go ahead
            self._work.wait(max(wait, 0.0))


# --------------------------------------------------------------------------- server


def when_done(assoc: Association, callback: Callable[[], object]) -> None:
    """Run `callback` when `assoc`'s thread ends (see RouterAssociation.when_done)."""
    assert isinstance(assoc, RouterAssociation), "netlayer.install() was not called"
    assoc.when_done(callback)


def requested(assoc: Association) -> bool:
    """True once an acceptor's A-ASSOCIATE-RQ has arrived (or for a requestor)."""
    return assoc.is_requestor or assoc.requestor.primitive is not None


class RouterAE(ApplicationEntity):
    """An AE whose association limit counts only associations that were requested."""

    @property
    def active_associations(self) -> list[Association]:
        """The associations that count against `maximum_associations` (change 7)."""
        return [a for a in super().active_associations if requested(a)]


class RouterRequestHandler(RequestHandler):
    """pynetdicom's handler; its association counted as not associated until its A-ASSOCIATE-RQ."""

    server: RouterServer

    def handle(self) -> None:
        """Create the association, count it until it associates, start it (else as upstream)."""
        assoc = self._create_association()
        self.server.unassociated.attach(self.request, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class RouterServer(ThreadedAssociationServer):
    """Accepts in one thread, prepares each socket (and TLS) in its own (change 7)."""

    request_queue_size = socket.SOMAXCONN
    stall_timeout: float = 60.0
    tls: ssl.SSLContext | None = None
    reuse_port = False
    # listen.proxy_protocol.trusted; None (the default) costs one attribute test per accept
    proxy_trusted: tuple[proxied.Network, ...] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", RouterRequestHandler)
        self.unassociated = Unassociated(limits.MAX_UNASSOCIATED)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Bind, with SO_REUSEPORT when several workers share the port."""
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Only accept: a TLS handshake here would let one silent client block all."""
        assert self.socket is not None
        return self.socket.accept()

    def connections(self) -> list[Association]:
        """Every association of this server, requested or not."""
        return [
            t for t in threading.enumerate() if isinstance(t, Association) and t._server is self
        ]

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the connection among those not associated (at the cap, one is evicted)."""
        self.unassociated.admit(request, client_address[0])
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Socket options, a PROXY header, the TLS handshake; then hand over to pynetdicom."""
        try:
            if self.proxy_trusted is not None and proxied.trusted(
                client_address[0], self.proxy_trusted
            ):
                client_address = self._proxied(request, client_address)
                if client_address is None:
                    return
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.stall_timeout)
            if self.tls is not None:
                # The handshake is what comes before an A-ASSOCIATE-RQ: the same limit.
                request.settimeout(min(limits.PDU_DEADLINE, self.stall_timeout))
                raw = request
                request = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                if not self.unassociated.rewrap(raw, request):
                    request.close()  # evicted meanwhile
                    return
                request.do_handshake()
                request.settimeout(self.stall_timeout)
        except (OSError, ssl.SSLError) as exc:
            if self.unassociated.leave_unattached(request):  # else evicted: that was its line
                limits.warn_from(client_address[0], "connection from %s dropped: %s", exc)
            self.shutdown_request(request)
            return
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.unassociated.leave_unattached(request)

    def _proxied(self, request: socket.socket, balancer: Any) -> Any:
        """The client's address from a trusted balancer's PROXY header (change 14).

        LOCAL and UNKNOWN keep the balancer's. None when the header is missing, malformed
        or late: the connection is closed with one log line.
        """
        limit = min(limits.PDU_DEADLINE, self.stall_timeout)
        try:
            header = proxied.read_header(request, time.monotonic() + limit, limit)
        except (ProtocolError, OSError) as exc:  # TimeoutError is an OSError
            if self.unassociated.leave_unattached(request):  # else evicted: that was its line
                limits.warn_from(
                    balancer[0],
                    "connection from %s (listen.proxy_protocol.trusted) closed: %s",
                    limits.escaped(str(exc), limits.MAX_REASON),
                )
            self.shutdown_request(request)
            return None
        if header.source is None:
            return balancer
        self.unassociated.readdress(request, header.source[0])
        return header.source

    def shutdown(self) -> None:
        """Stop serve_forever (pynetdicom's own also unregisters from the AE: it never was)."""
        socketserver.BaseServer.shutdown(self)

    def server_close(self) -> None:
        """Close the listening socket only (the shared one must not be shut down)."""
        if self.socket is not None:
            self.socket.close()


def shutdown_socket(assoc: Association) -> None:
    """Break whatever read the association's DUL is blocked in."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
