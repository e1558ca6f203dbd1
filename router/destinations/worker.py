"""The queue worker every queued destination kind shares, run by the forwarder process.

A destination gets `parallel` worker threads. Each claims due deliveries from the spool's
SQLite queue, waits while the destination as a whole is blocked (unreachable, or a
Retry-After), hands the batch to its kind (`send_batch`: DICOM in `dicom_worker`, STOW-RS
in `stow_worker`), and closes its connection after `idle_timeout` without work. What the
destination answered is settled here, once for every kind: the policy's verdict gives
delivered, dead letter or another attempt after a backoff; an unreachable destination
blocks as a whole, its instances' attempts not counted. A destination an administrator
paused (`queue pause`, the status page) is sent nothing until resumed: its workers read the
spool's pause row at most once a second (`_held`), never per instance.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from router.config.destinations import Policy, Retry
from router.destinations.dicom import Sent
from router.destinations.policy import OnStatus, backoff
from router.dicom.status import hex_code
from router.errors import ForwardError, PermanentError
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.pauses import Pause
from router.spool.queue import Delivery

log = logging.getLogger("router.forward")

IDLE_POLL = 0.05  # seconds between queue polls when there is nothing due
BUG_PAUSE = 1.0  # seconds a worker pauses after an unexpected exception
PROBE_SECONDS = 10.0  # while unreachable, how often one thread asks whether it is back
PAUSE_CHECK = 1.0  # seconds between reads of the destination's pause row (another process)


class Queued(Protocol):
    """What every queued destination's model has (DicomDestination, StowDestination)."""

    @property
    def retry(self) -> Retry: ...

    @property
    def on_status(self) -> Mapping[str, Policy]: ...

    @property
    def idle_timeout(self) -> float: ...


class Channel(Protocol):
    """A worker thread's connection to its destination (an association, an HTTP client)."""

    def close(self) -> None:
        """Close it; the next send opens another."""


D = TypeVar("D", bound=Queued)
C = TypeVar("C", bound=Channel)


class QueueWorkers(ABC, Generic[D, C]):
    """The worker threads of one destination and the state they share.

    A kind supplies `open_channel`, `send_batch` and `close_if_idle`; `send_batch` reports
    each instance through `settle` (or `postpone` when the destination cannot be reached).
    """

    def __init__(
        self, name: str, dest: D, spool: Spool, loaded: LoadedConfig, parallel: int
    ) -> None:
        self.name = name
        self.dest = dest
        self.calling_ae = loaded.config.listen.ae_title
        self.spool = spool
        self.on_status = OnStatus.parse(dest.on_status)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._blocked_until = 0.0
        self._failures = 0  # consecutive unreachable cycles: the backoff's attempt number
        self._paused_at = 0.0  # when the pause was last set or extended: see _kicked
        self._next_probe = 0.0  # monotonic: see _probed
        self._pause: Pause | None = None  # an administrator's pause, as last read: see _held
        self._pause_read = -PAUSE_CHECK  # monotonic: when it was read
        metrics.destination_started(name)
        self._threads = [
            threading.Thread(target=self._work, name=f"forward-{name}-{i}", daemon=True)
            for i in range(parallel)
        ]

    # --- what a kind supplies ----------------------------------------------------------

    @abstractmethod
    def open_channel(self) -> C:
        """A new, unconnected channel for one worker thread (it connects on first send)."""

    @abstractmethod
    def claim_limit(self) -> int:
        """How many due deliveries one claim may take."""

    @abstractmethod
    def send_batch(self, channel: C, batch: list[Delivery]) -> None:
        """Send `batch` (files present); call `settle` or `postpone` for every instance."""

    @abstractmethod
    def close_if_idle(self, channel: C) -> None:
        """Close the channel when it has had no work for idle_timeout."""

    def probe(self, channel: C) -> bool:
        """True when the unreachable destination answers again (kinds without a probe: False)."""
        return False

    def config_changed(self, loaded: LoadedConfig) -> None:
        """A reload that keeps this destination as it is: a kind reading the rules
        (a webhook's `include`) refreshes what it took from them."""

    def fit(self, due: list[Delivery]) -> list[Delivery]:
        """The part of `due` one batch takes (all of it, unless the kind limits bytes)."""
        return due

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def request_stop(self) -> None:
        """Ask every worker to stop after the instance in hand (see `stop`)."""
        self._stop.set()

    def stop(self, timeout: float) -> None:
        """Let each worker finish the instance in hand, then stop (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def stopping(self) -> bool:
        """True once the workers were asked to stop: a batch in hand ends early."""
        return self._stop.is_set()

    # --- the loop ------------------------------------------------------------------------

    def _work(self) -> None:
        channel = self.open_channel()
        try:
            while not self._stop.is_set():
                if self._held():
                    self.close_if_idle(channel)
                    self._stop.wait(PAUSE_CHECK)
                    continue
                wait = self._blocked_until - time.time()
                if wait > 0 and not self._kicked() and not self._probed(channel):
                    self._stop.wait(min(wait, 1.0))
                    continue
                batch = self._claim()
                if not batch:
                    self.close_if_idle(channel)
                    self._stop.wait(IDLE_POLL)
                    continue
                try:
                    ready = self._present(batch)
                    if ready and not self._stop.is_set():
                        self.send_batch(channel, ready)
                except Exception:  # a bug must not kill the worker: log, pause, go on
                    log.exception("forwarding to %s failed unexpectedly", self.name)
                    channel.close()
                    self._stop.wait(BUG_PAUSE)
                finally:
                    self._release(batch)
        finally:
            channel.close()

    def _claim(self) -> list[Delivery]:
        with self._lock:
            due = self.spool.due(self.name, self.claim_limit(), exclude=sorted(self._inflight))
            batch = self.fit(self._unit_or_singles(due))  # the rest stays due for the next
            self._inflight.update(d.id for d in batch)
        return batch

    def _unit_or_singles(self, due: list[Delivery]) -> list[Delivery]:
        """A completed unit's due deliveries all together (`unit_batch`), else the
        per-instance ones: a claim never mixes the two (called under the lock)."""
        if due and due[0].batch is not None:
            return self.spool.queue.unit_batch(self.name, due[0].batch, sorted(self._inflight))
        return [d for d in due if d.batch is None]

    def _release(self, batch: Sequence[Delivery]) -> None:
        with self._lock:
            self._inflight.difference_update(d.id for d in batch)

    def _present(self, batch: list[Delivery]) -> list[Delivery]:
        """The deliveries whose spooled file exists; the others are dead letters."""
        ready = []
        for d in batch:
            if d.path.exists():
                ready.append(d)
            else:
                self._outcome(d, "dead", None, "spooled file is missing")
        return ready

    # --- outcomes ------------------------------------------------------------------------

    def reached(self) -> None:
        """The destination answered (whatever it said): it is not unreachable.

        The first answer after an outage ends the pause for the rest of its queue: what
        was postponed or backed off meanwhile is due now, not at the end of its wait.
        """
        if self._failures:
            self._failures = 0
            self._end_pause()
            moved = self.spool.due_now(self.name)
            log.info(
                "destination %s reachable again: %d waiting deliveries due now",
                self.name,
                moved,
                extra={"event": "reachable", "destination": self.name},
            )

    def settle(self, d: Delivery, result: Sent | ForwardError) -> None:
        """Apply one instance's result: the policy's verdict on an answer, or the failure's."""
        if isinstance(result, PermanentError):
            self._outcome(d, "dead", result.status, str(result))
        elif isinstance(result, Sent):
            verdict = self.on_status.verdict(result.status)
            error = result.comment or f"status {hex_code(result.status)}"
            if verdict == "delivered":
                self._outcome(d, "delivered", result.status, None)
            elif verdict == "dead_letter":
                self._outcome(d, "dead", result.status, error)
            else:
                self._retry(d, result.status, error)
        else:
            self._retry(d, result.status, str(result))

    def postpone(self, rest: Sequence[Delivery], error: str) -> None:
        """The destination is unreachable: these wait for it, their attempts not counted."""
        until = self._block(error)
        for d in rest:
            self.spool.retry_later(d.id, max(d.next_attempt_at, until), None, error, count=False)

    def hold(self, seconds: float, why: str) -> float:
        """Send nothing to this destination for `seconds` (its Retry-After); until when."""
        until = self._block_for(seconds)
        log.warning(
            "destination %s asks for a pause (%s): next try in %.1f s",
            self.name,
            why,
            seconds,
            extra={"event": "retry_after", "destination": self.name},
        )
        return until

    def _retry(self, d: Delivery, status: int | None, error: str) -> None:
        attempts = d.attempts + 1
        if attempts >= self.dest.retry.max_attempts:
            self._outcome(d, "dead", status, f"gave up after {attempts} attempts: {error}")
            return
        delay = backoff(attempts, self.dest.retry)
        self.spool.retry_later(d.id, time.time() + delay, status, error)
        metrics.delivery_retry(self.name)
        self._log(d, "retry", status, f"{error}; attempt {attempts}, next in {delay:.1f} s")

    def _outcome(self, d: Delivery, state: str, status: int | None, error: str | None) -> None:
        if state == "delivered":
            self.spool.delivered(d.id, status or 0)
        else:
            self.spool.dead_letter(d.id, status, error or "dead letter")
        metrics.delivery_done(self.name, "delivered" if state == "delivered" else "dead_letter")
        self._log(d, state, status, error)

    def _block(self, error: str) -> float:
        """The destination is unreachable: back off as a whole; attempts are not counted."""
        self._failures += 1
        metrics.destination_unreachable(self.name)
        delay = backoff(self._failures, self.dest.retry)
        until = self._block_for(delay)
        log.warning(
            "destination %s unreachable (%s): next try in %s",
            self.name,
            error,
            _seconds(delay),
            extra={"event": "unreachable", "destination": self.name, "delay": delay},
        )
        return until

    def _kicked(self) -> bool:
        """True (and the pause ended) when `queue retry` asked for it since last seen.

        Read once a second by each worker while the destination is paused, never otherwise.
        """
        at = self.spool.kicked_at(self.name)
        with self._lock:
            if at <= self._paused_at:
                return False  # no request, or one older than this pause
            self._paused_at = at
            self._blocked_until = 0.0
        log.info(
            "destination %s: pause ended by `queue retry`",
            self.name,
            extra={"event": "kicked", "destination": self.name},
        )
        return True

    def _held(self) -> bool:
        """True while an administrator has paused this destination.

        The spool's row is read by one thread at most once every PAUSE_CHECK seconds (the
        others take the last answer), so a batch costs no query; the change is logged once.
        """
        now = time.monotonic()
        with self._lock:
            if now < self._pause_read + PAUSE_CHECK:
                return self._pause is not None
            self._pause_read = now
        pause = self.spool.pauses.of(self.name)
        with self._lock:
            changed = (pause is None) != (self._pause is None)
            self._pause = pause
        if changed and pause is not None:
            log.info(
                "destination %s paused by %s: sending nothing until resumed",
                self.name,
                pause.by,
                extra={"event": "paused", "destination": self.name, "user": pause.by},
            )
        elif changed:
            log.info(
                "destination %s resumed: sending again",
                self.name,
                extra={"event": "resumed", "destination": self.name},
            )
        return pause is not None

    def _probed(self, channel: C) -> bool:
        """While unreachable, one thread asks every PROBE_SECONDS whether it is back.

        A pause grows to `max_delay` (minutes): without a probe, a PACS that is back would
        wait that long. A pause the destination asked for (Retry-After) is not probed.
        """
        now = time.monotonic()
        with self._lock:
            if not self._failures or now < self._next_probe:
                return False
            self._next_probe = now + PROBE_SECONDS
        if not self.probe(channel):
            return False
        self.reached()
        return True

    def _end_pause(self) -> None:
        with self._lock:
            self._blocked_until = 0.0

    def _block_for(self, seconds: float) -> float:
        """Send nothing for `seconds` more (a longer block already set stays); until when."""
        with self._lock:
            self._paused_at = time.time()
            self._next_probe = time.monotonic() + PROBE_SECONDS
            self._blocked_until = max(self._blocked_until, self._paused_at + seconds)
            return self._blocked_until

    def _log(self, d: Delivery, state: str, status: int | None, error: str | None) -> None:
        log.info(
            "delivery %s to %s: %s status=%s%s",
            d.sop_instance_uid,
            self.name,
            state,
            hex_code(status),
            f" ({error})" if error else "",
            extra={
                "event": "delivery",
                "destination": self.name,
                "state": state,
                "sop_instance_uid": d.sop_instance_uid,
                "status": status,
                "error": error,
            },
        )


def file_size(path: Path) -> int:
    """A spooled file's size; 0 when it is gone (it is dead-lettered when sent)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _seconds(delay: float) -> str:
    """A wait as people read it: 1.5 s, 0.8 s; below 0.1 s three digits (0.00153 s)."""
    return f"{delay:.1f} s" if delay >= 0.1 else f"{delay:.3g} s"
