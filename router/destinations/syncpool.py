"""Sync forwarding's associations: kept open between C-STOREs, as queued forwarding does.

`mode: sync` sends from the SCP's handler threads, each C-STORE waiting for the
destination's answer. `SyncPool` lends each send a `Sender` whose association stays open
after it: up to `associations` idle senders per destination are kept (more are made
while more C-STOREs are in flight at once, bounded by `listen.max_associations`, and
closed when they come back to a full pool); a reaper thread closes those idle longer than
`idle_timeout`. A send on a reused association that breaks (the destination dropped it
while idle, or it died under us) is retried once on a fresh association; only then does
the error reach the sender, as 0xA700. A destination that does not answer within
`dimse_timeout` is not tried again: the sender has waited long enough.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from router.config.destinations import DicomDestination
from router.destinations.dicom import Sender, Sent
from router.errors import TransientError

log = logging.getLogger("router.forward")

REAP_EVERY = 0.5  # seconds between idle checks


class SyncPool:
    """Idle senders per destination, lent to one sync C-STORE at a time."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._lock = threading.Lock()
        self._idle: dict[str, list[Sender]] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def send(
        self,
        name: str,
        dest: DicomDestination,
        calling_ae: str,
        resolve: Callable[[str], Path],
        file: tuple[Path, str, str],
    ) -> Sent:
        """C-STORE `file` (path, SOP class, transfer syntax); raise a ForwardError if unanswered."""
        path, sop_class, ts = file
        sender = self._take(name, dest, calling_ae, resolve)
        try:
            reused = sender.assoc is not None and sender.assoc.is_established
            try:
                return sender.send(path, sop_class, ts)
            except TransientError as exc:
                if not reused or exc.timed_out:  # a silent destination gets no second wait
                    raise
                log.info(
                    "sync forward to %s: the open association broke (%s): once more on a new one",
                    name,
                    exc,
                    extra={"event": "sync-retry", "destination": name},
                )
                sender.close()
                return sender.send(path, sop_class, ts)
        finally:
            self._give(name, sender)

    def _take(
        self, name: str, dest: DicomDestination, calling_ae: str, resolve: Callable[[str], Path]
    ) -> Sender:
        stale: list[Sender] = []
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="sync-reaper", daemon=True)
                self._reaper.start()
            idle = self._idle.setdefault(name, [])
            # A reload changed the destination (or our AE title): its old senders go.
            stale = [s for s in idle if s.dest != dest or s.ae.ae_title != _ae(dest, calling_ae)]
            idle[:] = [s for s in idle if s not in stale]
            sender = idle.pop() if idle else None
        for old in stale:
            old.close()
        return sender or Sender(name, dest, calling_ae, resolve=resolve, scratch=self.scratch)

    def _give(self, name: str, sender: Sender) -> None:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            if not self._stop.is_set() and len(idle) < sender.dest.associations:
                idle.append(sender)
                return
        sender.close()

    def _reap(self) -> None:
        while not self._stop.wait(REAP_EVERY):
            now = time.monotonic()
            with self._lock:
                expired = [
                    s
                    for idle in self._idle.values()
                    for s in idle
                    if s.assoc is not None and now - s.last_used > s.dest.idle_timeout
                ]
            for sender in expired:
                with self._lock:
                    idle = self._idle.get(sender.name, [])
                    if sender not in idle:
                        continue  # lent out meanwhile: its borrower uses it
                    idle.remove(sender)
                sender.close()
                self._give(sender.name, sender)

    def close(self) -> None:
        """Stop the reaper and release every idle association."""
        self._stop.set()
        with self._lock:
            senders = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
        for sender in senders:
            sender.close()
        if self._reaper is not None:
            self._reaper.join(5)


def _ae(dest: DicomDestination, calling_ae: str) -> str:
    return dest.calling_ae_title or calling_ae
