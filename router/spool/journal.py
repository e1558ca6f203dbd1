"""After the answer: the decision log and the C-STORE log line, off the sender's clock.

Only what durability needs runs before a C-STORE-RSP (fsyncs, the queue commit). The
decision log (`trace`) and the log line are handed to one background thread that writes
decisions in batches, at the latest `FLUSH_SECONDS` after they happened; its queue is
bounded, so a stuck disk slows senders down instead of growing memory. kill -9 loses at
most the last `FLUSH_SECONDS` of decisions, never an instance.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from router.spool.database import Spool
from router.spool.decisions import DecisionRecord

log = logging.getLogger("router.journal")

FLUSH_SECONDS = 0.25
MAX_PENDING = 10_000
_STOP = object()


class Journal:
    """A thread that records decisions and emits log records handed to it."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._queue: queue.Queue[object] = queue.Queue(MAX_PENDING)
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def record(self, rec: DecisionRecord) -> None:
        """Log one decision for `trace` (within FLUSH_SECONDS)."""
        self._queue.put(rec)

    def emit(self, logger: logging.Logger, record: logging.LogRecord) -> None:
        """Hand a log record, made by the caller (its time stamp), to `logger`'s handlers."""
        self._queue.put((logger, record))

    def stop(self) -> None:
        """Write everything handed over so far, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(10)

    def _run(self) -> None:
        batch: list[DecisionRecord] = []
        deadline: float | None = None  # when the oldest unwritten decision is due
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, DecisionRecord):
                if not batch:
                    deadline = time.monotonic() + FLUSH_SECONDS
                batch.append(item)
            elif isinstance(item, tuple):
                item[0].handle(item[1])
            due = deadline is not None and time.monotonic() >= deadline
            if batch and (item is None or item is _STOP or len(batch) >= 500 or due):
                self._write(batch)
                batch, deadline = [], None
            if item is _STOP:
                return

    def _write(self, batch: list[DecisionRecord]) -> None:
        try:
            self._spool.record_many(batch)
        except Exception:  # the log is for people; it must never stop the router
            log.exception("cannot write %d decisions to the decision log", len(batch))
