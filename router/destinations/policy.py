"""What a destination's answer means, and how long to wait before trying again (pure).

`OnStatus` is a destination's `on_status` parsed once (design §4, §7): a queue worker
builds it when it starts, so a delivery costs a dict lookup and a few comparisons.
`backoff` is exponential with jitter, its exponent clamped first so that no outage is
long enough to overflow it (stamina's approach): a wait never exceeds `max_delay`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.config.destinations import Policy, Retry
from router.dicom import status

# 2**64 times any initial_delay is past every max_delay worth writing; a larger exponent
# only risks OverflowError (an int too large for a float).
MAX_EXPONENT = 64


@dataclass(frozen=True)
class OnStatus:
    """A destination's `on_status`, keys parsed: exact codes, ranges, class defaults."""

    exact: Mapping[int, Policy]
    ranges: tuple[tuple[int, int, Policy], ...]
    classes: Mapping[str, Policy]

    @classmethod
    def parse(cls, on_status: Mapping[str, Policy]) -> OnStatus:
        """From the config model's normalised keys: 0x0124, 0xA900-0xA9FF, warning, failure."""
        exact: dict[int, Policy] = {}
        ranges: list[tuple[int, int, Policy]] = []
        classes: dict[str, Policy] = {}
        for key, value in on_status.items():
            if key in ("warning", "failure"):
                classes[key] = value
            elif "-" in key:
                low, high = (int(part, 16) for part in key.split("-"))
                ranges.append((low, high, value))
            else:
                exact[int(key, 16)] = value
        return cls(exact, tuple(ranges), classes)

    def verdict(self, code: int) -> Policy:
        """delivered | retry | dead_letter for the destination's answer `code`.

        Precedence: an exact code, then the first range holding it, then the built-in
        permanent failures (0x0112, 0x0117, 0x0122, 0x0124, 0xA9xx: dead_letter), then
        the class (`warning` default delivered, `failure` default retry).
        """
        exact = self.exact.get(code)
        if exact is not None:
            return exact
        for low, high, value in self.ranges:
            if low <= code <= high:
                return value
        kind = status.category(code)
        if kind == "success":
            return "delivered"
        if kind == "failure" and status.is_permanent(code):
            return "dead_letter"
        return self.classes.get(kind, "delivered" if kind == "warning" else "retry")


def policy(code: int, on_status: Mapping[str, Policy]) -> Policy:
    """The verdict for `code` under `on_status` (parsed each call: workers keep an OnStatus)."""
    return OnStatus.parse(on_status).verdict(code)


def backoff(attempt: int, retry: Retry, rand: Callable[[], float] = random.random) -> float:
    """Seconds before attempt `attempt + 1`: initial * 2**(attempt-1), capped, jittered.

    The jitter keeps half the delay and randomises the other half, so that instances
    that failed together do not all come back together; it only shortens a wait, so no
    wait exceeds `max_delay`, however many attempts came before.
    """
    exponent = min(max(attempt - 1, 0), MAX_EXPONENT)
    delay = min(retry.max_delay, retry.initial_delay * float(2**exponent))
    return float(delay * (0.5 + 0.5 * min(max(rand(), 0.0), 1.0)))
