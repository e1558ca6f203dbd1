"""The worker threads of a STOW-RS destination: batches out of the queue, one POST each.

They share delivery.py's queue handling (claims, retries, dead letters, backoff, logs),
so `queue`, `trace` and the logs show STOW-RS deliveries like DICOM ones. A batch holds
up to `batch.max_instances` due instances and `batch.max_bytes` of files (at least one
instance, however large); each instance's answer goes through `forward.policy`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from router.config.model import StowDestination
from router.destinations import dicom as forward
from router.destinations.dicom import PermanentError, Sent, TransientError, Unreachable
from router.destinations.stow import Part, Result, ServerError, StowSender, Throttled
from router.destinations.worker import IDLE_POLL, DestinationWorkers
from router.dicom.status import hex_code
from router.spool.database import Delivery, Spool

log = logging.getLogger("router.forward")


class StowWorkers(DestinationWorkers):
    """`connections` threads, each POSTing batches over its own kept-alive connection."""

    def __init__(
        self, name: str, dest: StowDestination, calling_ae: str, base_dir: Path, spool: Spool
    ) -> None:
        super().__init__(name, dest, calling_ae, spool)
        self.stow = dest
        self.base_dir = base_dir

    def _claim(self) -> list[Delivery]:
        limit = self.stow.batch.max_bytes
        with self._lock:
            due = self.spool.due(self.name, self.stow.batch.max_instances, sorted(self._inflight))
            batch: list[Delivery] = []
            total = 0
            for d in due:
                size = _size(d.path)
                if batch and total + size > limit:
                    break  # the rest stays due for the next batch (or another thread)
                batch.append(d)
                total += size
            self._inflight.update(d.id for d in batch)
        return batch

    def _work(self) -> None:
        sender = StowSender(self.name, self.stow, self.base_dir)
        try:
            while not self._stop.is_set():
                wait = self._blocked_until - time.time()
                if wait > 0:
                    self._stop.wait(min(wait, 1.0))
                    continue
                batch = self._claim()
                if not batch:
                    sender.close_if_idle()
                    self._stop.wait(IDLE_POLL)
                    continue
                try:
                    self._post(sender, batch)
                except Exception:  # a bug must not kill the worker: log, pause, go on
                    log.exception("forwarding to %s failed unexpectedly", self.name)
                    self._stop.wait(1.0)
                finally:
                    self._release(batch)
        finally:
            sender.close()

    def _post(self, sender: StowSender, batch: list[Delivery]) -> None:
        ready = []
        for d in batch:
            if d.path.exists():
                ready.append(d)
            else:
                self._outcome(d, "dead", None, "spooled file is missing")
        if not ready or self._stop.is_set():
            return
        try:
            results = sender.send([Part(d.path, d.sop_instance_uid) for d in ready])
        except Throttled as exc:
            if exc.retry_after is None:
                self._postpone(ready, str(exc))
                return
            self._failures = 0
            until = self._hold(exc.retry_after, str(exc))
            for d in ready:  # not counted: the instances were not the problem
                self.spool.retry_later(d.id, until, None, str(exc), count=False)
            return
        except Unreachable as exc:
            self._postpone(ready, str(exc))
            return
        except TransientError as exc:
            self._failures = 0  # it answered, or the transfer started: not unreachable
            if isinstance(exc, ServerError) and exc.retry_after:
                self._hold(exc.retry_after, str(exc))
            results = [exc] * len(ready)
        except PermanentError as exc:
            self._failures = 0
            results = [exc] * len(ready)
        else:
            self._failures = 0
        for d, result in zip(ready, results, strict=True):
            self._settle(d, result)

    def _hold(self, seconds: float, why: str) -> float:
        """Send nothing to this destination for `seconds` (its Retry-After); until when."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.time() + seconds)
            until = self._blocked_until
        log.warning(
            "destination %s asks for a pause (%s): next try in %.1f s",
            self.name,
            why,
            seconds,
            extra={"event": "retry_after", "destination": self.name},
        )
        return until

    def _settle(self, d: Delivery, result: Result) -> None:
        if isinstance(result, PermanentError):
            self._outcome(d, "dead", result.status, str(result))
        elif isinstance(result, Sent):
            verdict = forward.policy(result.status, dict(self.stow.on_status))
            error = result.comment or f"status {hex_code(result.status)}"
            if verdict == "delivered":
                self._outcome(d, "delivered", result.status, None)
            elif verdict == "dead_letter":
                self._outcome(d, "dead", result.status, error)
            else:
                self._retry(d, result.status, error)
        else:
            self._retry(d, result.status, str(result))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a missing file is dead-lettered when its batch is sent
