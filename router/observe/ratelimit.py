"""Repeated warnings, rate limited by cause: a flood writes two lines per interval.

The first `burst` warnings of a cause are logged as they come (two senders that stall
in the same minute are both named at once); the others within the same `interval`
seconds are counted, and when the interval ends one summary line says how many there
were (`... and 5,000 more in the last 10 s like: <the last one>`). Then the next ones
are logged in full again. Every line held back counts in
`dicom_router_log_lines_suppressed_total{logger}`.

A cause is what the caller says repeats (a format string, with whatever else tells
causes apart); at most `max_causes` are tracked at once, beyond that the rest share one,
so a sender that makes up a new cause per connection cannot grow this table.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from router.observe import metrics

INTERVAL = 10.0  # seconds
BURST = 5  # lines of one cause logged in full per interval
MAX_CAUSES = 256
OVERFLOW = "(other causes)"


@dataclass
class _Window:
    """One cause's current interval: when it ends, what was held back."""

    end: float
    written: int = 1
    held: int = 0
    last: tuple[str, tuple[object, ...]] = ("", ())
    timer: threading.Timer | None = field(default=None, repr=False)


class RateLimitedLog:
    """A logger's warnings with repeats of one cause held back and summed up per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        max_causes: int = MAX_CAUSES,
        burst: int = BURST,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.max_causes = max_causes
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def warning(
        self, cause: str, message: str, *args: object, extra: dict[str, object] | None = None
    ) -> bool:
        """Log `message % args` unless `cause` was logged `burst` times in this interval.

        True when the line was written, False when it was held back (counted, summed up).
        """
        now = time.monotonic()
        with self._lock:
            if cause not in self._windows and len(self._windows) >= self.max_causes:
                self._forget_ended(now)
                if len(self._windows) >= self.max_causes:
                    cause = OVERFLOW
            window = self._windows.get(cause)
            if window is None or now >= window.end:
                self._windows[cause] = _Window(now + self.interval)
                held = False
            elif window.written < self.burst:
                window.written += 1
                held = False
            else:
                window.held += 1
                window.last = (message, args)
                if window.timer is None:  # one summary per interval, even if the flood stops
                    window.timer = threading.Timer(window.end - now, self._summarise, (window,))
                    window.timer.daemon = True
                    window.timer.start()
                held = True
        if held:
            metrics.log_line_suppressed(self.logger.name)
            return False
        self.logger.warning(message, *args, extra=extra)
        return True

    def _forget_ended(self, now: float) -> None:
        """Drop the causes whose interval is over (their summary, if any, is under way)."""
        for cause in [c for c, w in self._windows.items() if now >= w.end]:
            del self._windows[cause]

    def _summarise(self, window: _Window) -> None:
        with self._lock:
            held, (message, args) = window.held, window.last
            window.held = 0
        if held:
            self.logger.warning(
                "... and %s more in the last %g s like: " + message,
                f"{held:,}",
                self.interval,
                *args,
            )
