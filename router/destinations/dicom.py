"""Forwarding: sending spooled instances to DICOM destinations over one association.

Each failure maps to one class of `router.errors`' ForwardError tree, once, in `Sender`:
Unreachable (connect refused / timed out, association rejected or aborted before it was
established: the destination as a whole backs off), TransientError (timeout or abort
during a transfer: retried, attempt counted), PermanentError (no accepted presentation
context, a transfer syntax we cannot convert: dead letter). A destination's answer is
classified by `router.destinations.policy` (design §7, `on_status`).

Sending is from the file (`STORE_SEND_CHUNKED_DATASET`) on an exact-transfer-syntax
context. When the destination refuses the file's syntax, a compressed file is decompressed
frame by frame into a scratch file (`destinations.transcode`, keeping the SOP Instance UID) that
is sent from disk the same way; other syntaxes (big endian, deflated, explicit/implicit)
are loaded and converted by pynetdicom. A destination with `tls` is reached over TLS
(`router.net.tls`).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)

from router.config.destinations import DicomDestination
from router.destinations import transcode
from router.errors import (
    PermanentError,
    TLSConfigError,
    TranscodeError,
    TransientError,
    Unreachable,
)
from router.net import tls

log = logging.getLogger("router.forward")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


# --- one association to one destination ------------------------------------------------


def _nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(event.assoc.dimse_timeout)  # a PACS that stops reading is dropped


def contexts_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """For each SOP class: the file's own syntax, and the uncompressed ones as fallback."""
    out: list[PresentationContext] = []
    seen: set[tuple[str, str]] = set()
    for sop_class, ts in pairs:
        if (sop_class, ts) in seen:
            continue
        seen.add((sop_class, ts))
        out.append(build_context(sop_class, [ts]))
        fallback: list[str | UID] = [t for t in UNCOMPRESSED if t != ts]
        if fallback and (sop_class, "*") not in seen:
            seen.add((sop_class, "*"))
            out.append(build_context(sop_class, fallback))
    return out[:128]


@dataclass
class Sent:
    """The destination's answer to one C-STORE."""

    status: int
    comment: str | None


class Sender:
    """Keeps one association to a destination open while there is work."""

    def __init__(
        self,
        name: str,
        dest: DicomDestination,
        calling_ae: str,
        *,
        resolve: Callable[[str], Path] = Path,
        scratch: Path | None = None,
    ) -> None:
        self.name = name
        self.dest = dest
        self.resolve = resolve  # the rule file's relative paths (TLS files)
        self.scratch = scratch  # where decompressed copies go; default: next to the file
        self.ae = AE(ae_title=dest.calling_ae_title or calling_ae)
        self.ae.connection_timeout = dest.connect_timeout
        self.ae.acse_timeout = dest.connect_timeout
        self.ae.dimse_timeout = dest.dimse_timeout
        # Our idle close comes first; pynetdicom's own timer is only a backstop.
        self.ae.network_timeout = max(dest.idle_timeout * 2, 60.0)
        self.ae.maximum_pdu_size = dest.max_pdu
        self.assoc: Association | None = None
        self._classes: set[tuple[str, str]] = set()
        self.last_used = 0.0

    def _associate(
        self, pairs: set[tuple[str, str]], extra: Set[tuple[str, str]] = frozenset()
    ) -> Association:
        """Associate proposing `pairs` first, then `extra` as far as 128 contexts go."""
        self.close()
        contexts = contexts_for([*sorted(pairs), *sorted(extra - pairs)])
        tls_args = self._tls_args()
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=contexts,
            ae_title=self.dest.ae_title,
            max_pdu=self.dest.max_pdu,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
            tls_args=tls_args,
        )
        if not assoc.is_established:
            # An SCP that accepts no context often accepts the association, and pynetdicom
            # then aborts it: for us that is a refusal, like an A-ASSOCIATE-RJ.
            refused = bool(assoc.rejected_contexts) and not assoc.accepted_contexts
            why = "association rejected" if assoc.is_rejected or refused else "no association"
            where = f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"
            failed = tls_args[0].last_error if tls_args else None
            tail = f" ({tls.describe(failed)})" if isinstance(failed, OSError) else ""
            exc = Unreachable(f"{why} by {where}{tail}")
            exc.rejected = assoc.is_rejected or refused
            raise exc
        self.assoc = assoc
        proposed = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in contexts}
        self._classes = {p for p in pairs | extra if p in proposed}
        return assoc

    def ensure(self, pairs: set[tuple[str, str]]) -> Association:
        """An established association proposing contexts for `pairs` (and what it had)."""
        if self.assoc is not None and self.assoc.is_established and pairs <= self._classes:
            return self.assoc
        wanted = pairs | (self._classes if self.assoc is not None else set())
        try:
            return self._associate(pairs, wanted)
        except Unreachable as exc:
            if not exc.rejected:
                raise
            refused = exc
        # Many SCPs reject an association in which they accept no context at all. Try this
        # instance's contexts alone; if it is still rejected but Verification is accepted,
        # the contexts were the problem, not the destination.
        if wanted != pairs:
            try:
                return self._associate(pairs)
            except Unreachable as exc:
                if not exc.rejected:
                    raise
                refused = exc
        if self._accepts_echo():
            names = ", ".join(sorted({c for c, _ in pairs}))
            raise PermanentError(f"no accepted presentation context for {names}") from refused
        raise refused

    def _tls_args(self) -> tuple[tls.ClientContext, str] | None:
        """A fresh context per association, so renewed certificate files are picked up."""
        if self.dest.tls is None:
            return None
        try:
            ctx = tls.client_context(self.dest.tls, self.resolve)
        except TLSConfigError as exc:
            raise Unreachable(f"{self.dest.ae_title}@{self.dest.host}: {exc}") from exc
        return ctx, self.dest.tls.server_name or self.dest.host

    def _accepts_echo(self) -> bool:
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=[build_context(Verification)],
            ae_title=self.dest.ae_title,
            tls_args=self._tls_args(),
        )
        accepted = assoc.is_established
        if accepted:
            assoc.release()
        return accepted

    def echo(self) -> bool:
        """True when the destination accepts a Verification association and C-ECHO succeeds."""
        try:
            tls_args = self._tls_args()
        except Unreachable:
            return False
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=[build_context(Verification)],
            ae_title=self.dest.ae_title,
            tls_args=tls_args,
        )
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and status.get("Status") == 0
        finally:
            assoc.release()

    def send(self, path: Path, sop_class: str, ts: str) -> Sent:
        """Send one spooled file; raise a ForwardError unless the destination answered."""
        assoc = self.ensure({(sop_class, ts)})
        self.last_used = time.monotonic()
        accepted = {
            str(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class
        }
        if not accepted:
            raise PermanentError(f"no accepted presentation context for {sop_class}")
        if ts in accepted:
            return self._store(assoc, path)
        if UID(ts).is_compressed:
            return self._send_decompressed(path, sop_class, ts, accepted)
        return self._store(assoc, _converted(path))

    def _store(self, assoc: Association, what: Path | Dataset) -> Sent:
        """One C-STORE on `assoc`, its failures mapped to the error tree."""
        start = time.monotonic()
        try:
            rsp = assoc.send_c_store(what)
        except (OSError, RuntimeError) as exc:
            self.close()
            raise TransientError(f"transfer failed: {exc}") from exc
        except ValueError as exc:  # pynetdicom: no usable context after all
            raise PermanentError(str(exc)) from exc
        self.last_used = time.monotonic()
        if "Status" not in rsp:
            self.close()
            # pynetdicom answers both with an empty response; only the time tells them apart.
            if self.last_used - start >= 0.95 * self.dest.dimse_timeout:
                silent = TransientError(
                    f"no response within dimse_timeout ({self.dest.dimse_timeout:g} s)"
                )
                silent.timed_out = True
                raise silent
            raise TransientError("the association broke during the C-STORE")
        comment = rsp.get("ErrorComment")
        return Sent(int(rsp.Status), str(comment) if comment else None)

    def _send_decompressed(self, path: Path, sop_class: str, ts: str, accepted: set[str]) -> Sent:
        """Decompress into a scratch file in an accepted syntax and send that file."""
        targets = [t for t in UNCOMPRESSED if t in accepted]
        if not targets:
            raise PermanentError(
                f"destination refuses {UID(ts).name} and accepts no uncompressed syntax"
                f" for {sop_class}"
            )
        folder = self.scratch or path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".decompressed-", suffix=".tmp", dir=folder)
        os.close(fd)
        plain = Path(name)
        try:
            try:
                transcode.decompress(path, plain, targets[0])
            except TranscodeError as exc:
                raise PermanentError(
                    f"destination refuses {UID(ts).name} and it cannot be decompressed here: {exc}"
                ) from exc
            # Decoding a big file takes a while: the association may have gone meanwhile.
            return self._store(self.ensure({(sop_class, ts)}), plain)
        finally:
            plain.unlink(missing_ok=True)

    def request_commitment(
        self,
        requests: Sequence[tuple[str, Sequence[tuple[str, str]]]],
        on_answer: Callable[[str, str | None], None],
        on_report: Callable[[Event], tuple[Dataset, None]],
        reported: Callable[[], bool],
        wait: float,
    ) -> None:
        """Ask for Storage Commitment (N-ACTION, Action Type 1) of each (Transaction UID,
        [(SOP Class, SOP Instance)]) on one association of its own, calling
        `on_answer(uid, None)` on 0x0000, else with why not; then keep the association up
        to `wait` s (or until `reported()`) for N-EVENT-REPORTs, each handed to
        `on_report`. Unreachable when there is no association."""
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=[build_context(StorageCommitmentPushModel)],
            ae_title=self.dest.ae_title,
            max_pdu=self.dest.max_pdu,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_N_EVENT_REPORT, on_report)],
            tls_args=self._tls_args(),
        )
        where = f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"
        if not assoc.is_established:
            raise Unreachable(f"no association with {where} for storage commitment")
        try:
            for uid, refs in requests:
                on_answer(uid, _n_action(assoc, uid, refs))
            deadline = time.monotonic() + wait
            while assoc.is_established and not reported() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            if assoc.is_established:
                assoc.release()

    def close(self) -> None:
        """Release the association, if any."""
        if self.assoc is not None:
            if self.assoc.is_established:
                self.assoc.release()
            self.assoc = None
        self._classes = set()


def _n_action(assoc: Association, uid: str, refs: Sequence[tuple[str, str]]) -> str | None:
    """One Request Storage Commitment; None when answered 0x0000, else why not."""
    ds = Dataset()
    ds.TransactionUID = uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    try:
        rsp, _ = assoc.send_n_action(
            ds, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    except (OSError, RuntimeError, ValueError) as exc:  # no accepted context, a broken link
        return f"N-ACTION not sent: {exc}"
    code = getattr(rsp, "Status", None)
    if code is None:
        return "no N-ACTION response"
    return None if code == 0 else f"N-ACTION status 0x{int(code):04X}"


def _converted(path: Path) -> Dataset:
    """The uncompressed dataset, loaded: pynetdicom converts it to an accepted syntax."""
    return dcmread(path)
