"""The queued destinations' worker threads, run by the forwarder process.

They read due deliveries from the spool's SQLite queue. A destination gets
`associations` worker threads, each keeping one association open while there is work
and closing it after `idle_timeout`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from router.config.model import DicomDestination, StowDestination
from router.destinations import dicom as forward
from router.destinations.dicom import PermanentError, Sender, TransientError, Unreachable
from router.dicom.status import hex_code
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Delivery, Spool

log = logging.getLogger("router.forward")

BATCH = 16
IDLE_POLL = 0.05  # seconds between queue polls when there is nothing due


class DestinationWorkers:
    """The worker threads of one destination and the state they share."""

    def __init__(
        self,
        name: str,
        dest: DicomDestination | StowDestination,
        calling_ae: str,
        spool: Spool,
        resolve: Callable[[str], Path] = Path,
    ) -> None:
        self.name = name
        self.dest = dest
        self.calling_ae = calling_ae
        self.spool = spool
        self.resolve = resolve
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._blocked_until = 0.0
        self._failures = 0
        metrics.destination_started(name)
        self._threads = [
            threading.Thread(target=self._work, name=f"forward-{name}-{i}", daemon=True)
            for i in range(
                dest.associations if isinstance(dest, DicomDestination) else dest.connections
            )
        ]

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Let each worker finish the instance in hand, then stop (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _claim(self) -> list[Delivery]:
        with self._lock:
            batch = self.spool.due(self.name, BATCH, exclude=sorted(self._inflight))
            self._inflight.update(d.id for d in batch)
        return batch

    def _release(self, batch: Sequence[Delivery]) -> None:
        with self._lock:
            self._inflight.difference_update(d.id for d in batch)

    def _work(self) -> None:
        assert isinstance(self.dest, DicomDestination)  # StowWorkers has its own loop
        work = self.spool.root / "work"
        sender = Sender(self.name, self.dest, self.calling_ae, resolve=self.resolve, scratch=work)
        try:
            while not self._stop.is_set():
                wait = self._blocked_until - time.time()
                if wait > 0:
                    self._stop.wait(min(wait, 1.0))
                    continue
                batch = self._claim()
                if not batch:
                    if (
                        sender.assoc
                        and time.monotonic() - sender.last_used > self.dest.idle_timeout
                    ):
                        sender.close()
                    self._stop.wait(IDLE_POLL)
                    continue
                try:
                    self._run_batch(sender, batch)
                except Exception:  # a bug must not kill the worker: log, pause, go on
                    log.exception("forwarding to %s failed unexpectedly", self.name)
                    sender.close()
                    self._stop.wait(1.0)
                finally:
                    self._release(batch)
        finally:
            sender.close()

    def _run_batch(self, sender: Sender, batch: list[Delivery]) -> None:
        for i, delivery in enumerate(batch):
            if self._stop.is_set():
                return
            try:
                self._deliver(sender, delivery)
            except Unreachable as exc:
                self._postpone(batch[i:], str(exc))
                return

    def _postpone(self, rest: list[Delivery], error: str) -> None:
        """The destination is unreachable: these wait for it, their attempts not counted."""
        until = self._block(error)
        for d in rest:
            self.spool.retry_later(d.id, max(d.next_attempt_at, until), None, error, count=False)

    def _deliver(self, sender: Sender, d: Delivery) -> None:
        if not d.path.exists():
            self._outcome(d, "dead", None, "spooled file is missing")
            return
        took = metrics.timer()
        try:
            sent = sender.send(d.path, d.sop_class_uid, d.transfer_syntax)
            metrics.delivery_sent(self.name, d.path, took())
        except TransientError as exc:
            self._retry(d, exc.status, str(exc))
            return
        except PermanentError as exc:
            self._outcome(d, "dead", exc.status, str(exc))
            return
        self._failures = 0
        verdict = forward.policy(sent.status, dict(self.dest.on_status))
        error = sent.comment or f"status {hex_code(sent.status)}"
        if verdict == "delivered":
            self._outcome(d, "delivered", sent.status, None)
        elif verdict == "dead_letter":
            self._outcome(d, "dead", sent.status, error)
        else:
            self._retry(d, sent.status, error)

    def _retry(self, d: Delivery, status: int | None, error: str) -> None:
        attempts = d.attempts + 1
        if attempts >= self.dest.retry.max_attempts:
            self._outcome(d, "dead", status, f"gave up after {attempts} attempts: {error}")
            return
        delay = forward.backoff(attempts, self.dest.retry)
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
        delay = forward.backoff(self._failures, self.dest.retry)
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.time() + delay)
        log.warning(
            "destination %s unreachable (%s): next try in %.1f s",
            self.name,
            error,
            delay,
            extra={"event": "unreachable", "destination": self.name},
        )
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


class Forwarder:
    """All destinations' workers in the forwarder process; `apply()` follows reloads."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.workers: dict[str, DestinationWorkers] = {}

    def apply(self, loaded: LoadedConfig) -> None:
        """Start, restart or stop destinations so they match `loaded`."""
        calling = loaded.config.listen.ae_title
        wanted = {
            name: dest
            for name, dest in loaded.config.destinations.items()
            if isinstance(dest, DicomDestination | StowDestination)
        }
        for name in list(self.workers):
            current = self.workers[name]
            if wanted.get(name) != current.dest or current.calling_ae != calling:
                current.stop(timeout=60)
                del self.workers[name]
                if name not in wanted:
                    log.info("destination %s removed: its queue waits until it is back", name)
        for name, dest in wanted.items():
            if name not in self.workers:
                self.workers[name] = _workers(name, dest, loaded, self.spool)
                self.workers[name].start()

    def stop(self, timeout: float) -> None:
        """Stop every destination, each finishing the instance in hand."""
        for workers in self.workers.values():
            workers._stop.set()
        for workers in self.workers.values():
            workers.stop(timeout)


def _workers(
    name: str, dest: DicomDestination | StowDestination, loaded: LoadedConfig, spool: Spool
) -> DestinationWorkers:
    if isinstance(dest, StowDestination):
        from router.destinations.stow_worker import StowWorkers  # it builds on this module

        return StowWorkers(name, dest, loaded.config.listen.ae_title, loaded.base_dir, spool)
    return DestinationWorkers(name, dest, loaded.config.listen.ae_title, spool, loaded.resolve)


