"""A timer thread of the forwarder process: runs `tick()` until stopped, surviving its errors."""

from __future__ import annotations

import logging
import threading


class Ticker:
    """Calls `tick()` every `interval()` seconds in a daemon thread named `name`."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> object:
        """One look; overridden."""
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds until the next tick."""
        return 1.0

    def start(self) -> None:
        """Start the timer thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the tick under way."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug or a locked database must not end the timer
                self._log.exception("%s: tick failed", self._thread.name)
            self._stop.wait(self.interval())
