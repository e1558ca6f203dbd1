"""Admission of an association: `callers`, and `max_associations` over all workers."""

from __future__ import annotations

from typing import Any

# The pure matching is the rule engine's, so that fixtures apply `callers` too.
from router.rules.engine import caller_allowed as caller_allowed

# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling / called AE title not
# recognized (PS3.8 9.3.4).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
# rejected-transient, service-provider (presentation), local-limit-exceeded: as pynetdicom.
REJECT_BUSY = (0x02, 0x03, 0x02)


class Budget:
    """`max_associations` over all workers: each worker counts its own in a shared slot."""

    def __init__(self, counts: Any, slot: int, limit: int) -> None:
        self._counts = counts
        self._slot = slot
        self.limit = limit

    def take(self) -> bool:
        """Count one more association, unless the total is at the limit."""
        with self._counts.get_lock():
            if sum(self._counts) >= self.limit:
                return False
            self._counts[self._slot] += 1
            return True

    def give(self) -> None:
        """An association counted by `take` has ended."""
        with self._counts.get_lock():
            self._counts[self._slot] = max(0, self._counts[self._slot] - 1)
