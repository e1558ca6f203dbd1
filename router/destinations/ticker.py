"""A timer thread of the forwarder process: runs `tick()` until stopped, surviving its errors.

`wake()` makes the next tick come now rather than after `interval()`: news that another
thread found (a commitment report recorded) is acted on at once.
"""

from __future__ import annotations

import logging
import threading
import time


class Ticker:
    """Calls `tick()` every `interval()` seconds in a daemon thread named `name`."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self._log = log
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by wake() and stop(): the wait ends early
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> object:
        """One look; overridden."""
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds until the next tick."""
        return 1.0

    def min_gap(self) -> float:
        """Seconds at least between the starts of two ticks, however often `wake` is called."""
        return 0.0

    def wake(self) -> None:
        """Tick now (after the tick under way, if any), not after the interval."""
        self._wake.set()

    def start(self) -> None:
        """Start the timer thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the tick under way."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def started(self) -> bool:
        """True once start() was called."""
        return self._thread.ident is not None

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def _run(self) -> None:
        started = 0.0
        while not self._stop.is_set():
            gap = started + self.min_gap() - time.monotonic()
            if gap > 0 and self._stop.wait(gap):
                break
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # a bug or a locked database must not end the timer
                self._log.exception("%s: tick failed", self._thread.name)
            self._wake.wait(self.interval())
            self._wake.clear()
