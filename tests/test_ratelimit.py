"""router.observe.ratelimit: repeated warnings held back by cause and summed up per interval."""

from __future__ import annotations

import logging
import time

import pytest

from router.observe.ratelimit import BURST, OVERFLOW, RateLimitedLog

INTERVAL = 0.3


class Lines(logging.Handler):
    """Every message the logger wrote, formatted."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        """The lines, once there are `count` (summaries come when their interval ends)."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.lines


@pytest.fixture
def lines(request: pytest.FixtureRequest) -> Lines:
    """A handler on a logger of its own (named for the test; late summaries land there too)."""
    logger = logging.getLogger(f"test.ratelimit.{request.node.name}")
    logger.propagate = False
    handler = Lines(logger)
    logger.addHandler(handler)
    return handler


def limited(lines: Lines, max_causes: int = 256) -> RateLimitedLog:
    """A rate limit over the `lines` fixture's logger."""
    return RateLimitedLog(lines.logger, interval=INTERVAL, max_causes=max_causes)


def test_repeats_of_one_cause_are_a_burst_then_one_summary(lines: Lines) -> None:
    """1,000 warnings of one cause: the first BURST as is, then '... and 995 more' at the end."""
    log = limited(lines)
    written = [log.warning("refused", "from %s refused", f"10.0.0.{i % 250}") for i in range(1000)]
    assert written == [True] * BURST + [False] * (1000 - BURST)
    assert lines.wait_for(BURST + 1) == [
        *(f"from 10.0.0.{i} refused" for i in range(BURST)),
        f"... and {1000 - BURST} more in the last {INTERVAL:g} s like: from 10.0.0.249 refused",
    ]
    time.sleep(INTERVAL)
    assert len(lines.lines) == BURST + 1  # one summary, not one per held line


def test_a_cause_is_logged_in_full_again_once_its_interval_is_over(lines: Lines) -> None:
    """After the interval, the next warning of the cause is written as is."""
    log = limited(lines)
    assert log.warning("c", "first")
    time.sleep(INTERVAL * 1.2)
    assert log.warning("c", "second")
    assert lines.lines == ["first", "second"]  # nothing held: no summary


def test_different_causes_are_held_back_apart(lines: Lines) -> None:
    """A flood of one cause does not hide another."""
    log = limited(lines)
    for _ in range(BURST + 10):
        log.warning("a", "a line")
    assert log.warning("b", "b line")
    assert lines.lines == ["a line"] * BURST + ["b line"]


def test_causes_beyond_the_limit_share_one(lines: Lines) -> None:
    """Made-up causes cannot grow the table: past `max_causes` they share one."""
    log = limited(lines, max_causes=4)
    written = [log.warning(f"cause {i}", "line %d", i) for i in range(100)]
    # 4 causes of their own, then the overflow's burst
    assert written[: 4 + BURST] == [True] * (4 + BURST) and not any(written[4 + BURST :])
    assert len(log._windows) == 4 + 1 and OVERFLOW in log._windows
