"""The worker threads of a DICOM destination: one association each, one C-STORE per instance.

`router.destinations.worker` claims, settles and backs off; this module only sends: each
instance of a batch on the thread's association (`Sender`), until the destination turns
out unreachable, when the rest of the batch waits for it.
"""

from __future__ import annotations

import logging
import time

from router.config.destinations import DicomDestination
from router.destinations.dicom import Sender
from router.destinations.worker import QueueWorkers, file_size
from router.errors import ForwardError, Unreachable
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.queue import Delivery

log = logging.getLogger("router.forward")

BATCH = 16  # due deliveries claimed at once by one thread


class DicomWorkers(QueueWorkers[DicomDestination, Sender]):
    """`associations` threads, each keeping one association open while there is work."""

    def __init__(
        self, name: str, dest: DicomDestination, spool: Spool, loaded: LoadedConfig, parallel: int
    ) -> None:
        super().__init__(name, dest, spool, loaded, parallel)
        self.resolve = loaded.resolve  # the rule file's relative paths (TLS files)

    def open_channel(self) -> Sender:
        """A Sender that associates at its first C-STORE; decompressed copies go to work/."""
        scratch = self.spool.root / "work"
        return Sender(self.name, self.dest, self.calling_ae, resolve=self.resolve, scratch=scratch)

    def claim_limit(self) -> int:
        """A few instances: the rest stay claimable by the destination's other threads."""
        return BATCH

    def send_batch(self, channel: Sender, batch: list[Delivery]) -> None:
        """C-STORE each instance; once the destination is unreachable, the rest wait.

        A completed series or study (`batch` set) goes over an association of its own.
        """
        if batch[0].batch is None:
            self._send_each(channel, batch)
            return
        channel.close()
        try:
            # Every (class, syntax) of the unit proposed at once: one association for all.
            channel.ensure({(d.sop_class_uid, d.transfer_syntax) for d in batch})
        except Unreachable as exc:
            self.postpone(batch, str(exc))
            return
        except ForwardError:
            pass  # a context refused: each instance then gets its own outcome below
        try:
            self._send_each(channel, batch)
        finally:
            channel.close()
        log.info(
            "sent collected unit %d to %s: %d instances on one association",
            batch[0].batch,
            self.name,
            len(batch),
            extra={"event": "unit_sent", "destination": self.name, "instances": len(batch)},
        )

    def _send_each(self, channel: Sender, batch: list[Delivery]) -> None:
        for i, d in enumerate(batch):
            if self.stopping:
                return
            took = metrics.timer()
            try:
                sent = channel.send(d.path, d.sop_class_uid, d.transfer_syntax)
            except Unreachable as exc:
                self.postpone(batch[i:], str(exc))
                return
            except ForwardError as exc:
                self.settle(d, exc)
                continue
            metrics.delivery_sent(self.name, file_size(d.path), took())
            self.reached()
            self.settle(d, sent)

    def probe(self, channel: Sender) -> bool:
        """A C-ECHO: answered with success, the destination is back."""
        return channel.echo()

    def close_if_idle(self, channel: Sender) -> None:
        """Release the association after idle_timeout without work."""
        if channel.assoc and time.monotonic() - channel.last_used > self.dest.idle_timeout:
            channel.close()
