"""What the admin's buttons do: retry dead letters (one or all), purge them, force a study.

Each takes the spool and the posted form and returns the sentence the page shows and the
log keeps; the same spool operations as `queue retry`, `queue purge`, `studies complete`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from router.destinations.sweeper import force_complete
from router.errors import BadRequest
from router.spool.database import Spool


def retry(spool: Spool, form: Mapping[str, str]) -> str:
    """One dead letter (`id`) or all of a destination's (or every one's) queued again."""
    destination = form.get("destination") or None
    if "id" in form:
        raw = form["id"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:  # SQLite's int64
            raise BadRequest(f"id {raw[:40]!r} is not a dead letter's number")
        if not spool.queue.requeue_dead_letter(int(raw)):
            raise BadRequest(f"no dead letter {raw} (retried or purged already?): reload the page")
        spool.kick(destination)
        return f"dead letter {raw} of {destination}: 1 queued again"
    count = spool.requeue_dead_letters(destination)
    due = spool.due_now(destination)
    spool.kick(destination)
    whose = destination or "every destination"
    return f"{count} dead letters of {whose} queued again, {due} due now"


def purge(spool: Spool, form: Mapping[str, str]) -> str:
    """The dead letters of a destination (or every one's) deleted."""
    destination = form.get("destination") or None
    count = spool.purge(destination)
    return f"{count} dead letters of {destination or 'every destination'} purged"


def force(spool: Spool, form: Mapping[str, str]) -> str:
    """A collecting study or series completed now (the sweeper sends it within a second)."""
    uid = form.get("uid", "")
    units = force_complete(spool, uid)
    return f"{uid}: {len(units)} series/studies to complete (forced)"


ACTIONS: dict[str, Callable[[Spool, Mapping[str, str]], str]] = {
    "/actions/retry": retry,
    "/actions/purge": purge,
    "/actions/force": force,
}
