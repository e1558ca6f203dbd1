"""The one timer that completes collected series and studies, run by the forwarder process.

Receiving workers only count instances into `received_units`; this thread, in the single
forwarder process, completes each unit once its quiet time has passed since the last
instance any worker received, or `max_wait` since its first, and so releases the held
deliveries for the destinations' workers. Its state is the spool's: after a restart or a
kill -9 it finds the same units and completes them.
"""

from __future__ import annotations

import logging
import time

from router.config.studies import Studies
from router.destinations.ticker import Ticker
from router.observe import metrics
from router.spool.database import Spool
from router.spool.studies import COMPLETE, FORCING, Unit

log = logging.getLogger("router.studies")

MAX_TICK = 1.0  # seconds between two looks, at most


class Sweeper(Ticker):
    """Completes due units every tick; `apply` follows the `studies:` section on reload."""

    def __init__(self, spool: Spool, studies: Studies) -> None:
        super().__init__("studies-sweeper", log)
        self.spool = spool
        self.studies = studies

    def apply(self, studies: Studies) -> None:
        """Use a reloaded `studies:` section from the next tick."""
        self.studies = studies
        self.spool.queue.keep_collected = studies.late == "resend"

    def start(self) -> None:
        """Start the timer thread."""
        self.apply(self.studies)
        super().start()

    def tick(self) -> int:
        """Complete every due unit; how many."""
        return self.sweep()

    def interval(self) -> float:
        """A quarter of the quiet time, at most MAX_TICK."""
        return min(MAX_TICK, self.studies.quiet / 4)

    def sweep(self) -> int:
        """Complete every due unit; how many."""
        studies = self.studies
        due = self.spool.units.due(studies.quiet, studies.max_wait)
        for unit in due:
            if unit.state == FORCING:
                reason = "forced"
            elif unit.last_at > _now() - studies.quiet:
                reason = "max_wait"
            else:
                reason = "quiet"
            complete_unit(self.spool, unit, reason, studies)
        return len(due)


def complete_unit(spool: Spool, unit: Unit, reason: str, studies: Studies) -> int:
    """Complete one unit, release its held deliveries, log and count it; how many released."""
    released = spool.units.complete(
        unit.level, unit.uid, reason, resend=studies.late == "resend" and unit.late > 0
    )
    level = logging.WARNING if reason == "max_wait" else logging.INFO
    log.log(
        level,
        "%s %s complete (%s): %d instances from %s, %d deliveries released%s",
        unit.level,
        unit.uid,
        reason,
        unit.count,
        unit.calling_ae,
        released,
        " (still receiving after max_wait)" if reason == "max_wait" else "",
        extra={
            "event": "unit_complete",
            "level": unit.level,
            "uid": unit.uid,
            "reason": reason,
            "instances": unit.count,
            "released": released,
        },
    )
    metrics.unit_completed(unit.level, reason)
    return released


def force_complete(spool: Spool, uid: str) -> list[Unit]:
    """`studies complete UID`: the study and its series, or the series, marked for the
    sweeper to complete at its next tick (reason forced), held late instances too.

    The forwarder completes them, so its log and metrics show it; the units marked.
    """
    units = [u for u in spool.units.of(uid) if u.state != COMPLETE or u.held]
    if any(u.level == "series" and u.uid == uid for u in units):
        units = [u for u in units if u.uid == uid]  # a series: not its whole study
    spool.units.force(units)
    return units


def released(spool: Spool, seen: set[tuple[str, str]], studies: Studies) -> int:
    """on_release: complete the collecting series and studies an association sent."""
    done = 0
    for level, uid in sorted(seen):
        unit = spool.units.unit(level, uid)
        if unit is not None and unit.state != COMPLETE:
            complete_unit(spool, unit, "released", studies)
            done += 1
    return done


def _now() -> float:
    return time.time()
