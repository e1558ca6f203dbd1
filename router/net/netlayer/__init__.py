"""Everything the router changes in pynetdicom's network layer, in one place.

Written for pynetdicom 3.0.4 (`PYNETDICOM_VERSION`): `install()` refuses any other
version, and tests/test_netlayer.py pins the source of every upstream function replaced
here, so that an upgrade fails loudly instead of silently running half-patched code.
Line numbers are pynetdicom v3.0.4's. The changes live in `dul.py` (1-3, 10, 12), `dimse.py`
(4-5, 9, 12), `association.py` (6-7, 11, 13, 14), `unassociated.py` (13) and `proxied.py`
(14) beside this file;
`packing.py` holds the messages packed and unpacked with `struct`, `pducheck.py` the checks
of received PDUs (12), `limits.py` every limit.
Each change, why, and what it replaces:

1. `RouterDUL._read_pdu_data` replaces `dul.py:258-336` (`DULServiceProvider._read_pdu_data`)
   and `transport.py:595-610` (`AssociationSocket.recv`). Limits before allocation: an
   A-ASSOCIATE-RQ/AC above `MAX_ASSOCIATE_PDU`, a P-DATA-TF above the maximum PDU length we
   advertised, any other PDU above `MAX_SMALL_PDU`: A-ABORT, one log line, connection closed
   (upstream allocated whatever the header claimed). A PDU must be complete within
   `PDU_DEADLINE` of its first byte (upstream: one socket timeout per 4 KiB read, so a
   trickle held a slot forever). One `recv_into` a buffer of the PDU's size (upstream: 4 KiB
   `recv` calls extending a bytearray), P-DATA-TF items parsed as memoryviews (no copy)
   when no EVT_DATA_RECV/EVT_PDU_RECV handler is bound.
2. `RouterDUL.run_reactor` replaces `dul.py:390-448`: instead of sleeping 1 ms whenever idle
   it waits in `select` on the socket and a wake-up socketpair, written to by `send_pdu`,
   `kill_dul` and any other thread's queue put (at most `IDLE_WAKE` s, or the ARTIM
   timer's remaining time). An exception in the state machine (`do_action`, which upstream
   ran outside the `try`) aborts the association with one log line instead of killing the
   thread with a traceback while the peer waits.
3. `RouterDUL.send_pdu` adds backpressure to `dul.py:472-496`: at most `SEND_QUEUE_LIMIT`
   primitives wait to be sent (upstream queued a whole chunked C-STORE, ~100-250 MB, in RAM).
   `RouterDUL.stop_dul` replaces `dul.py:498-514`, which spun on `time.sleep(0)`.
4. `RouterDIMSE.receive_primitive` replaces `dimse.py:248-308` and the decoding in
   `dimse_messages.py:440-511` (`DIMSEMessage.decode_msg`): a C-STORE-RQ's dataset goes to
   a file we create (`os.open` in `incoming/`, file meta packed with `struct`, byte-identical
   to `create_file_meta` + `write_file_meta_info`; no per-PDV flush); other datasets stay
   in memory below `MAX_MEMORY_DATASET`; a command set above `MAX_COMMAND_SET`, dataset
   fragments before a command, an unknown command field, an undecodable command set or a
   context ID that was not accepted end in A-ABORT with one log line (upstream: a thread
   traceback, or unbounded memory). A write error (ENOSPC) drains the rest of the dataset
   and hands the C-STORE on with `receive_error` set, so the sender gets 0xA700. A partial
   file, or a received one never handed to the handler, is removed when the association
   ends, however it ends (upstream left them in the temp folder). When the last fragment
   is written, the file's writeback is started (`sync_file_range`, a hint), so the
   handler's fsync a millisecond later waits less. A requestor's P-DATA decoded before
   its own thread handled the A-ASSOCIATE-AC waits for that (`ESTABLISH_WAIT`), as
   upstream's queue between the two did.
5. `RouterDIMSE.send_msg` replaces `dimse.py:310-336` for a plain C-STORE-RSP (status only):
   the command set is packed with `struct`, byte-identical to `primitive_to_message` +
   `encode_msg`, which encoded it twice through pydicom.
6. `RouterAssociation._run_reactor` replaces `association.py:701-776`: it waits on an event
   kicked by the DIMSE message queue, the DUL's user queue and the DUL's end, instead of
   sleeping 1 ms per turn; a pause (`_reactor_checkpoint.clear()`) is checked again after
   the reactor marks itself running, which closes the race in which a `send_c_store` saw a
   stale `_is_paused` and the reactor stole its C-STORE-RSP. `run_reactor` is wrapped so
   that an exception during negotiation (e.g. a presentation context without a transfer
   syntax) aborts instead of leaving the peer waiting. A released association is marked
   `is_released` before its A-RELEASE-RP is queued, not after: EVT_CONN_CLOSE (the DUL's
   thread, once the peer closes) must never see a cleanly released association unmarked.
   Setting `network_timeout` (`association.py:591-596`) also wakes the reactor, so a
   shorter timeout applies at once.
7. `RouterAE.active_associations` (used by `acse.py:379-381` for `maximum_associations`)
   counts only associations whose A-ASSOCIATE-RQ arrived: connections that never
   associate cannot lock senders out. `RouterServer` (replaces `transport.py:930-1089` in
   part): accepts only in the accept thread (TLS handshakes run in the connection's thread),
   sets TCP_NODELAY, caps connections that have not associated (change 13),
   listens with a `socket.SOMAXCONN` backlog (socketserver's default is 5), optionally
   binds with SO_REUSEPORT, and its `shutdown` does not call `ae._servers.remove`
   (`transport.py:1040`, which raised because `make_server` never registered it).
8. `threading.excepthook`: a pynetdicom thread that still dies logs one line through our
   logger instead of a traceback on stderr.
9. `store_request` (in `RouterDIMSE._command_done`) replaces, for a plain C-STORE-RQ
   (the six elements of PS3.7 9.3.1.1, no Move Originator) and when no EVT_DIMSE_RECV
   handler is bound, `dsutils.py:70-120` (`decode`, through pydicom) and
   `dimse_messages.py:692-736` (`message_to_primitive`): the command set is read with
   `struct` and the C_STORE primitive set through its own validating setters, in
   upstream's order. Anything else (another command, a repeated or multi-valued element,
   an empty UID) takes upstream's path.
10. `RouterDUL._send` replaces `dul.py:450-462` for a P-DATA-TF when no EVT_PDU_SENT
   handler is bound: the PDU is packed with `struct` (`encode_p_data`), byte-identical to
   `pdu.py:109-125` (`PDU.encode` over `P_DATA_TF._encoders` and each
   `PresentationDataValueItem`'s), which concatenated bytes field by field. It serves the
   C-STORE-RSP and the forwarder's datasets alike.
   Changes 9 and 10 together: a bare SCP's CPU per C-STORE 2.5 -> 1.95 ms
   (`bench/bare_scp.py PORT --netlayer DIR`, 0.5 MB CT).
11. `RouterAssociation._abort_blocking` replaces `association.py:229-260`: the same abort,
   but instead of a fixed `time.sleep(0.1)` at its end it waits (at most as long) for the
   association's own thread to end. A requestor whose connection was refused never started
   that thread, so an unreachable destination is known in ~1 ms instead of ~0.1 s: a
   forwarder thread no longer spends 0.1 s per unreachable cycle.
12. Received PDUs are checked in PS3.8's terms before pynetdicom decodes them
   (`pducheck.problem`, in `RouterDUL._read_pdu_data`): an A-ASSOCIATE-RQ/AC's items and
   sub-items walked within their lengths, their types, counts and value lengths (UIDs 1-64
   bytes, implementation version name 1-16, odd context IDs); the four bytes of
   A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT (source, reason). Upstream's decoder failed
   inside with `AttributeError`/`IndexError`/`KeyError` (`pdu.py:294`, `presentation.py:552`,
   `pdu.py:1988`), and its state machine met the association thread's answer with
   `InvalidEventError` (`fsm.py:79`) after aborting on an unexpected PDU (AA-1/AA-8, which it
   did not log). Now: `RouterDUL._explain` logs "unexpected P-DATA-TF before the association
   was accepted", and an event without a transition ends the association quietly when its
   reason was logged. `RouterDIMSE` checks the command set's Command Field and Command Data
   Set Type explicitly. One log line per association (later bytes of an aborted one are not
   logged again); no exception class name in it (`limits.reason`: a protocol or validator
   message, or "internal error" with the traceback at DEBUG); peer-supplied values are
   escaped and cut to `MAX_SHOWN` characters (`escaped`), a quoted reason to `MAX_REASON`.
13. `Unassociated` (`unassociated.py`) counts the connections whose A-ASSOCIATE-RQ has not
   arrived, at most `MAX_UNASSOCIATED` per server; a new one at the cap evicts the oldest
   of the address holding the most (its socket is shut down), so a flood of silent or
   half-sent connections cannot lock out a sender that associates at once. The count is
   kept under one lock from the accept (`RouterServer.process_request`) to EVT_REQUESTED
   or the thread's end; `RouterRequestHandler.handle` (replaces `transport.py:711-723`,
   `RequestHandler.handle`) hands it the association before it starts. A DUL that ends
   before an A-ASSOCIATE-RQ wakes the association's wait for one at once (upstream waited
   out the ACSE timeout, 10 s). The repeated warnings of the netlayer (`limits.warn`) are
   rate limited by cause (`router.observe.ratelimit`).
14. The PROXY protocol (`proxied.py`; the parser is `router.net.proxyproto`, pure):
   `RouterServer.process_request_thread` (replaces `transport.py:1078-1089` in part), for a
   connection from an address of `listen.proxy_protocol.trusted` only, reads one v1 or v2
   header before TLS and before the A-ASSOCIATE-RQ (MSG_PEEK, so not a byte past it), within
   `min(PDU_DEADLINE, network_timeout)` of the accept; the client address it carries is the
   `client_address` handed to pynetdicom (`RequestHandler.remote` -> `requestor.address`),
   so `callers`, logs, metrics and the decision log see the modality, and the unassociated
   count (13) charges it, not the balancer. Missing, malformed or late: connection closed,
   one log line. Upstream has no PROXY protocol. From any other address nothing is read; a
   PROXY header from one is an unknown PDU type to `RouterDUL._read_pdu_data`, which says so.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pynetdicom
import pynetdicom.ae
import pynetdicom.association

from router.errors import StartupError
from router.net.netlayer import limits
from router.net.netlayer.association import (
    RouterAE,
    RouterAssociation,
    RouterServer,
    requested,
    shutdown_socket,
    when_done,
)
from router.net.netlayer.dimse import RouterDIMSE
from router.net.netlayer.dul import RouterDUL
from router.net.netlayer.limits import (
    PDU_DEADLINE,
    PYNETDICOM_VERSION,
    UPSTREAM_SOURCES,
    escaped,
)
from router.net.netlayer.packing import encode_p_data, file_meta, store_request, store_rsp_command

__all__ = [
    "PDU_DEADLINE",
    "PYNETDICOM_VERSION",
    "UPSTREAM_SOURCES",
    "RouterAE",
    "RouterServer",
    "encode_p_data",
    "escaped",
    "file_meta",
    "install",
    "requested",
    "shutdown_socket",
    "store_request",
    "store_rsp_command",
    "when_done",
]

_installed = False


def install(incoming: Path) -> None:
    """Put the router's changes in place; received datasets go to `incoming`."""
    global _installed
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        raise StartupError(
            f"pynetdicom {pynetdicom.__version__} is installed; router/netlayer was "
            f"written for {PYNETDICOM_VERSION} exactly"
        )
    limits.incoming = incoming
    if _installed:
        return
    # The association module builds its providers from these globals, and the AE and the
    # server's request handler look Association up in their modules at call time.
    pynetdicom.association.DULServiceProvider = RouterDUL  # type: ignore[attr-defined]
    pynetdicom.association.DIMSEServiceProvider = RouterDIMSE  # type: ignore[attr-defined]
    pynetdicom.association.Association = RouterAssociation  # type: ignore[misc]
    pynetdicom.ae.Association = RouterAssociation  # type: ignore[attr-defined]
    threading.excepthook = _log_thread_death
    _installed = True


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread else "?"
    limits.log.error("thread %s ended by %s: %s", name, args.exc_type.__name__, args.exc_value)
