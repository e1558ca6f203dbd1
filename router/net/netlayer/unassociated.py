"""Connections that have not associated yet: at most `limits.MAX_UNASSOCIATED` (change 13).

A connection is *waiting* from its accept until its A-ASSOCIATE-RQ has arrived (then it
counts against `max_associations` instead) or until it ends. When a new connection finds
the cap reached, the oldest waiting connection of the address holding the most is closed
to make room: a flood of silent or half-sent connections from a few addresses evicts its
own, and a sender that sends its A-ASSOCIATE-RQ within moments of connecting gets in
(upstream had no cap; the first cap here refused the newest, whoever it was).

The count is kept here, under one lock, by the accept thread (admit) and the connections'
threads (leave), so it is exact: counting threads instead missed the connections accepted
whose association thread had not started yet, and counted the ones that had closed and
whose thread still waited out its ACSE timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association

from router.net.netlayer import limits
from router.observe import metrics


class Waiting:
    """One connection without an A-ASSOCIATE-RQ: its socket, where from, since when."""

    __slots__ = ("address", "assoc", "evicted", "since", "sock")

    def __init__(self, sock: Any, address: str) -> None:
        self.sock = sock  # the socket pynetdicom reads (with TLS: the wrapped one)
        self.address = address
        self.since = time.monotonic()
        self.assoc: Association | None = None
        self.evicted = False


class Unassociated:
    """The connections of one server that have not associated, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.peak = 0
        self._lock = threading.Lock()
        self._waiting: dict[Any, Waiting] = {}  # by socket, oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, sock: socket.socket, address: str) -> None:
        """Count a connection just accepted; at the cap, evict one to make room."""
        with self._lock:
            victim = self._victim() if len(self._waiting) >= self.limit else None
            if victim is not None:
                del self._waiting[victim.sock]
                victim.evicted = True
                if victim.assoc is not None:  # its eviction is its one line
                    victim.assoc.router_logged = True  # type: ignore[attr-defined]
            self._waiting[sock] = Waiting(sock, address)
            peak = len(self._waiting) > self.peak
            if peak:
                self.peak = len(self._waiting)
        if peak:
            metrics.unassociated_peak(self.peak)
        if victim is not None:
            _evict(victim, self.limit)

    def _victim(self) -> Waiting:
        """The oldest waiting connection of the address holding the most (ties: the oldest)."""
        counts = Counter(w.address for w in self._waiting.values())
        busiest = max(counts, key=counts.__getitem__)  # the first seen among equals
        return next(w for w in self._waiting.values() if w.address == busiest)

    def readdress(self, sock: socket.socket, address: str) -> None:
        """A PROXY header named the client: evictions count it by its own address."""
        with self._lock:
            entry = self._waiting.get(sock)
            if entry is not None:
                entry.address = address

    def rewrap(self, old: socket.socket, new: socket.socket) -> bool:
        """TLS: from now on the connection is read through `new`; False if it was evicted."""
        with self._lock:
            entry = self._waiting.pop(old, None)
            if entry is None:
                return False
            entry.sock = new
            self._waiting[new] = entry
            return True

    def attach(self, sock: socket.socket, assoc: Association) -> None:
        """pynetdicom made `assoc` for `sock`: it leaves once its A-ASSOCIATE-RQ is in."""
        with self._lock:
            entry = self._waiting.get(sock)
            if entry is None:  # evicted before pynetdicom got it: its socket is shut
                entry = Waiting(sock, "")
                entry.evicted = True
            entry.assoc = assoc
            if entry.evicted:
                assoc.router_logged = True  # type: ignore[attr-defined]
        assoc.waiting = entry  # type: ignore[attr-defined]
        assoc.bind(evt.EVT_REQUESTED, self._requested)
        when_done = getattr(assoc, "when_done", None)
        if when_done is not None:
            when_done(lambda: self.leave(entry))

    def _requested(self, event: evt.Event) -> None:
        entry: Waiting | None = getattr(event.assoc, "waiting", None)
        if entry is not None:
            self.leave(entry)

    def leave(self, entry: Waiting) -> None:
        """The connection associated or ended: it no longer counts (idempotent)."""
        with self._lock:
            if self._waiting.get(entry.sock) is entry:
                del self._waiting[entry.sock]

    def leave_unattached(self, sock: socket.socket) -> bool:
        """The connection's thread is done: if pynetdicom never took it, it ends here.

        False when it was no longer counted (evicted, or pynetdicom has it).
        """
        with self._lock:
            entry = self._waiting.get(sock)
            if entry is None or entry.assoc is not None:
                return False
            del self._waiting[sock]
            return True


def _evict(victim: Waiting, limit: int) -> None:
    """Close `victim`'s connection: its reads end, and so does its thread."""
    metrics.connection_evicted()
    limits.warn_from(
        victim.address,
        "connection from %s closed after %.1f s without an A-ASSOCIATE-RQ: %d connections "
        "had not associated (the oldest of the address holding the most makes room)",
        time.monotonic() - victim.since,
        limit,
    )
    with contextlib.suppress(OSError):
        victim.sock.shutdown(socket.SHUT_RDWR)
