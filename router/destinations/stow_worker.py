"""The worker threads of a STOW-RS destination: batches out of the queue, one POST each.

`router.destinations.worker` claims, settles and backs off, so `queue`, `trace`, the logs
and the metrics show STOW-RS deliveries like DICOM ones. A batch holds up to
`batch.max_instances` due instances and `batch.max_bytes` of files (at least one
instance, however large); each instance's answer goes through the destination's
`on_status`. A 429 or 5xx with Retry-After pauses the whole destination that long.
"""

from __future__ import annotations

from router.config.destinations import StowDestination
from router.destinations.stow import Part, Result, StowSender
from router.destinations.worker import QueueWorkers, file_size
from router.errors import PermanentError, ServerError, Throttled, TransientError, Unreachable
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.queue import Delivery


class StowWorkers(QueueWorkers[StowDestination, StowSender]):
    """`connections` threads, each POSTing batches over its own kept-alive connection."""

    def __init__(
        self, name: str, dest: StowDestination, spool: Spool, loaded: LoadedConfig, parallel: int
    ) -> None:
        super().__init__(name, dest, spool, loaded, parallel)
        self.base_dir = loaded.base_dir  # auth secret files and CA bundle are relative to it

    def open_channel(self) -> StowSender:
        """A sender whose httpx client is made at its first POST."""
        return StowSender(self.name, self.dest, self.base_dir)

    def claim_limit(self) -> int:
        """At most `batch.max_instances` per request."""
        return self.dest.batch.max_instances

    def fit(self, due: list[Delivery]) -> list[Delivery]:
        """The first instances within `batch.max_bytes` (at least one); a completed series
        or study whole, in one request (streamed from the spool, whatever its size)."""
        if due and due[0].batch is not None:
            return due
        batch: list[Delivery] = []
        total = 0
        for d in due:
            size = file_size(d.path)
            if batch and total + size > self.dest.batch.max_bytes:
                break
            batch.append(d)
            total += size
        return batch

    def send_batch(self, channel: StowSender, batch: list[Delivery]) -> None:
        """One POST; each instance settled from the answer, or all alike on a failure."""
        took = metrics.timer()
        results: list[Result]
        try:
            results = channel.send([Part(d.path, d.sop_instance_uid) for d in batch])
        except Throttled as exc:
            if exc.retry_after is None:
                self.postpone(batch, str(exc))
                return
            self.reached()
            until = self.hold(exc.retry_after, str(exc))
            for d in batch:  # not counted: the instances were not the problem
                self.spool.retry_later(d.id, until, None, str(exc), count=False)
            return
        except Unreachable as exc:
            self.postpone(batch, str(exc))
            return
        except TransientError as exc:
            self.reached()  # it answered, or the transfer started: not unreachable
            if isinstance(exc, ServerError) and exc.retry_after:
                self.hold(exc.retry_after, str(exc))
            results = [exc] * len(batch)
        except PermanentError as exc:
            self.reached()
            results = [exc] * len(batch)
        else:
            self.reached()
            metrics.delivery_sent(self.name, sum(file_size(d.path) for d in batch), took())
        for d, result in zip(batch, results, strict=True):
            self.settle(d, result)

    def close_if_idle(self, channel: StowSender) -> None:
        """Close the kept-alive connection after idle_timeout without work."""
        channel.close_if_idle()
