"""The DUL (upper layer) with limits, deadlines, event-driven wake-ups and backpressure.

Changes 1, 2, 3, 10, 12, 13 and 14 of router.net.netlayer (see its docstring).
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF

from router.net import proxyproto
from router.net.netlayer import limits, pducheck
from router.net.netlayer.packing import encode_p_data

# --------------------------------------------------------------------------- queues


class KickQueue(queue.Queue[Any]):
    """A queue whose every put also calls `kick` (wakes whoever waits for work)."""

    def __init__(self, kick: Any) -> None:
        super().__init__()
        self._kick = kick

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._kick()


# --------------------------------------------------------------------------- DUL


class _PData:
    """A received P-DATA-TF whose PDVs are memoryviews into the PDU buffer (change 1)."""

    __slots__ = ("presentation_data_value_list",)

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        self.presentation_data_value_list = items

    def to_primitive(self) -> _PData:
        return self


class RouterDUL(DULServiceProvider):
    """pynetdicom's DUL with limits, deadlines, event-driven wake-ups and backpressure."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._run_loop_delay = 0.0
        self._space = threading.Condition()
        self.to_provider_queue = KickQueue(self._wake_from_other)
        self.event_queue = KickQueue(self._wake_from_other)
        self.to_user_queue = KickQueue(self._kick_assoc)

    # -- wake-ups

    def wake(self) -> None:
        """Wake the reactor from its wait."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _wake_from_other(self) -> None:
        if threading.current_thread() is not self:
            self.wake()

    def _kick_assoc(self) -> None:
        kick = getattr(self.assoc, "kick", None)
        if kick is not None:
            kick()

    def _wait(self) -> None:
        sock = self.socket.socket if self.socket is not None else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        timeout = limits.IDLE_WAKE
        if self.artim_timer._start_time is not None and self.artim_timer._end_time is None:
            timeout = max(0.0, min(timeout, self.artim_timer.remaining))
        fds: list[Any] = [self._wake_r]
        if sock is not None and sock.fileno() >= 0:
            fds.append(sock)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    # -- reactor (change 2)

    def run_reactor(self) -> None:
        """The DUL thread: receive, send and run the state machine, waiting on events."""
        self._idle_timer.start()
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait()
                    continue
                except Exception as exc:
                    self._hard_abort(limits.reason(exc))
                    return
                if not self._explain(event):
                    return
                try:
                    self.state_machine.do_action(event)
                except Exception as exc:
                    self._hard_abort(limits.reason(exc))
                    return
                self._notify_space()
        finally:
            cast(Any, self.assoc.dimse).discard_partial()
            self._kick_assoc()
            if self.assoc.is_acceptor and self.assoc.requestor.primitive is None:
                # Closed before an A-ASSOCIATE-RQ: end the wait for one now, not after
                # the ACSE timeout (the connection stops counting as not associated).
                self.to_user_queue.put(None)
            with self._space:
                self._space.notify_all()
            self._wake_r.close()
            self._wake_w.close()

    def _explain(self, event: str) -> bool:
        """Log, in PS3.8's terms, why `event` ends the association (change 12).

        A PDU the current state cannot take (PS3.8 table 9-10: AA-1, AA-8) is logged here,
        once; upstream logged nothing, and the association's own thread, answering a
        moment later, met a state without a transition for its answer (InvalidEventError).
        An event without a transition means the association is over: abort, quietly when
        its reason was logged already. False when the reactor must stop.
        """
        state = self.state_machine.current_state
        action = TRANSITION_TABLE.get((event, state))
        logged = getattr(self.assoc, "router_logged", False)
        if action is None:
            self._hard_abort(None if logged else pducheck.impossible(event, state))
            return False
        why = pducheck.unexpected(event, state)
        if action in ("AA-1", "AA-8") and why is not None:
            self._say("association with %s aborted: %s", why)
        return True

    def _say(self, message: str, why: object) -> None:
        """The association's one log line: what follows an abort (the rest of the peer's
        bytes, read as PDUs until it closes) is not logged again (change 12)."""
        if not getattr(self.assoc, "router_logged", False):
            limits.warn(self.assoc, message, why)

    def _hard_abort(self, why: str | None) -> None:
        """Send an A-ABORT outside the state machine (its state is now unknown) and stop.

        `why` is logged; None when the association's end was logged already.
        """
        if why is not None:
            self._say("association with %s aborted: %s", why)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        if self.socket is not None and self.socket.socket is not None:
            with contextlib.suppress(Exception):
                self.socket.socket.sendall(abort.encode())
            self.socket.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        if self.assoc.requestor.primitive is None:
            self.to_user_queue.put(None)  # wakes the wait for an A-ASSOCIATE-RQ

    def kill_dul(self) -> None:
        """Stop the reactor, now."""
        self._kill_thread = True
        self.wake()

    def stop_dul(self) -> bool:
        """Stop the reactor if in Sta1 (idle); True when it has stopped."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join(limits.PDU_DEADLINE)
        return True

    # -- sending (changes 3 and 10)

    def _send(self, pdu: Any) -> None:
        """Encode and send a PDU; a P-DATA-TF by `encode_p_data` (change 10)."""
        if (
            type(pdu) is P_DATA_TF
            and self.socket is not None
            and not self.assoc.get_handlers(evt.EVT_PDU_SENT)
        ):
            self.socket.send(encode_p_data(pdu))
            return
        super()._send(pdu)

    def send_pdu(self, primitive: Any) -> None:
        """Queue `primitive` for sending; blocks while `limits.SEND_QUEUE_LIMIT` are waiting."""
        with self._space:
            while (
                self.to_provider_queue.qsize() >= limits.SEND_QUEUE_LIMIT
                and self.is_alive()
                and not self._kill_thread
            ):
                self._space.wait(0.5)
        super().send_pdu(primitive)

    def _notify_space(self) -> None:
        if self.to_provider_queue.qsize() < limits.SEND_QUEUE_LIMIT:
            with self._space:
                self._space.notify_all()

    # -- receiving (change 1)

    def _pdu_limit(self, pdu_type: int) -> int:
        if pdu_type in (0x01, 0x02):
            return limits.MAX_ASSOCIATE_PDU
        if pdu_type == 0x04:
            mine = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
            limit = int(mine.maximum_length or 0)
            return limit if limit > 0 else limits.UNLIMITED_PDU_CAP
        return limits.MAX_SMALL_PDU

    def _recv_into(self, buf: memoryview, deadline: float) -> int:
        """Fill `buf` from the socket before `deadline`; the count read (short on EOF)."""
        assert self.socket is not None
        sock = self.socket.socket
        assert sock is not None
        got, stall = 0, self.network_timeout or limits.PDU_DEADLINE
        while got < len(buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"PDU not complete within {limits.PDU_DEADLINE:.0f} s")
            sock.settimeout(min(left, stall))  # a silent peer is also a stalled one
            try:
                n = sock.recv_into(buf[got:])
            except TimeoutError:
                if left <= stall:
                    raise TimeoutError(
                        f"PDU not complete within {limits.PDU_DEADLINE:.0f} s"
                    ) from None
                raise TimeoutError(f"nothing received for {stall:.0f} s") from None
            if n == 0:
                break
            got += n
        return got

    def _read_pdu_data(self) -> None:
        assert self.socket is not None
        header = bytearray(6)
        deadline = time.monotonic() + limits.PDU_DEADLINE
        try:
            if self._recv_into(memoryview(header), deadline) < 6:
                self.event_queue.put("Evt17")
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                if proxyproto.is_prefix(header):  # change 14: tested only on this error path
                    self._reject_pdu(
                        "PROXY protocol header refused: the address is not in "
                        "listen.proxy_protocol.trusted"
                    )
                    return
                # As upstream: Evt19, the state machine's A-ABORT (AA-1/AA-8), then close.
                self._say("association with %s aborted: %s", f"unknown PDU type 0x{pdu_type:02X}")
                self.event_queue.put("Evt19")
                return
            limit = self._pdu_limit(pdu_type)
            if length > limit:
                self._reject_pdu(
                    f"PDU type 0x{pdu_type:02X} claims {length} bytes, above the limit {limit}"
                )
                return
            data = bytearray(6 + length)
            data[:6] = header
            if self._recv_into(memoryview(data)[6:], deadline) < length:
                self._reject_pdu(f"connection closed inside a PDU ({length} bytes announced)")
                return
        except (OSError, TimeoutError) as exc:
            if self.assoc.requestor.primitive is not None or not isinstance(exc, TimeoutError):
                self.event_queue.put("Evt17")
                if isinstance(exc, TimeoutError):
                    self._say("connection from %s dropped: %s", exc)
                return
            self._reject_pdu(str(exc))
            return
        why = pducheck.problem(pdu_type, data)
        if why is None:
            try:
                pdu, event = self._decode(pdu_type, data)
            except Exception as exc:
                why = f"undecodable {pducheck.PDU_NAMES[pdu_type]} ({limits.reason(exc)})"
        if why is not None:
            self._say("association with %s aborted: %s", why)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _decode(self, pdu_type: int, data: bytearray) -> tuple[Any, str]:
        if pdu_type == 0x04 and not (
            self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            view, items, offset, end = memoryview(data), [], 6, len(data)
            while offset < end:
                if offset + 6 > end:
                    raise limits.ProtocolError("truncated PDV item")
                (item_length,) = struct.unpack_from(">L", data, offset)
                if item_length < 2 or offset + 4 + item_length > end:
                    raise limits.ProtocolError(f"PDV item length {item_length} outside the PDU")
                items.append((data[offset + 4], view[offset + 5 : offset + 4 + item_length]))
                offset += 4 + item_length
            if not items:
                raise limits.ProtocolError("P-DATA-TF without a PDV item")
            return _PData(items), "Evt10"
        if pdu_type == 0x01 and len(data) >= 42:
            self._set_aside_ae_titles(data)
        return cast(tuple[Any, str], DULServiceProvider._decode_pdu(self, data))

    def _set_aside_ae_titles(self, data: bytearray) -> None:
        """Replace AE titles pynetdicom would refuse to decode; the SCP rejects them.

        pynetdicom raises on control characters in an AE title, which ended the
        association with an A-ABORT; the standard answer is A-ASSOCIATE-RJ.
        """
        for offset, which in ((10, "called"), (26, "calling")):
            raw = bytes(data[offset : offset + 16])
            if any(b < 0x20 or b >= 0x7F or b == 0x5C for b in raw):
                hostile = getattr(self.assoc, "hostile_ae_titles", {})
                hostile[which] = raw.rstrip(b" ")
                self.assoc.hostile_ae_titles = hostile  # type: ignore[attr-defined]
                data[offset : offset + 16] = b"INVALID".ljust(16)

    def _reject_pdu(self, why: str) -> None:
        """Abort at once, closing the connection, for a PDU we will not read (one log line)."""
        self._say("connection from %s aborted: %s", why)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = limits.ABORT_INVALID_PARAMETER
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.settimeout(1.0)
                sock.sendall(abort.encode())
        if self.socket is not None:
            self.socket.close()  # puts Evt17: the state machine goes back to idle
        if self.assoc.requestor.primitive is None and self.assoc.is_acceptor:
            self.to_user_queue.put(None)  # wakes the wait for an A-ASSOCIATE-RQ
