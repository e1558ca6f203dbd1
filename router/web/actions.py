"""What the admin's buttons do: retry dead letters (one or all), purge them, force a study,
pause or resume a destination.

Each takes the page's context, the posted form and the user's name, and returns the
sentence the page shows and the log keeps; the same spool operations as `queue retry`,
`queue purge`, `studies complete`, `queue pause`, `queue resume`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from router.destinations.sweeper import force_complete
from router.errors import BadRequest, did_you_mean
from router.observe.instruments import queued_destinations
from router.web.views import Context


def retry(ctx: Context, form: Mapping[str, str], _by: str) -> str:
    """One dead letter (`id`) or all of a destination's (or every one's) queued again."""
    spool = ctx.spool
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


def purge(ctx: Context, form: Mapping[str, str], _by: str) -> str:
    """The dead letters of a destination (or every one's) deleted."""
    destination = form.get("destination") or None
    count = ctx.spool.purge(destination)
    return f"{count} dead letters of {destination or 'every destination'} purged"


def force(ctx: Context, form: Mapping[str, str], _by: str) -> str:
    """A collecting study or series completed now (the sweeper sends it within a second)."""
    uid = form.get("uid", "")
    units = force_complete(ctx.spool, uid)
    return f"{uid}: {len(units)} series/studies to complete (forced)"


def pause(ctx: Context, form: Mapping[str, str], by: str) -> str:
    """A destination sent nothing until resumed (the forwarder sees it within a second)."""
    name = _queued(ctx, form)
    done = ctx.spool.pause(name, by)
    if done.by != by:
        return f"{name} was paused already, by {done.by}"
    return f"{name} paused: nothing is sent to it until resumed"


def resume(ctx: Context, form: Mapping[str, str], _by: str) -> str:
    """A paused destination sends again, its waiting deliveries at once."""
    name = _queued(ctx, form)
    ended, pending = ctx.spool.resume(name)
    was = f"paused by {ended.by}" if ended else "was not paused"
    return f"{name} resumed ({was}): {pending} pending deliveries due now"


def _queued(ctx: Context, form: Mapping[str, str]) -> str:
    """The form's destination, one with a queue in the running config."""
    name = form.get("destination", "")
    known = queued_destinations(ctx.daemon.current().config)
    if name not in known:
        raise BadRequest(f"no queued destination {name[:64]!r}{did_you_mean(name, known)}")
    return name


Action = Callable[[Context, Mapping[str, str], str], str]
"""An action: the page's context, the posted form, the user's name -> what was done."""

ACTIONS: dict[str, Action] = {
    "/actions/retry": retry,
    "/actions/purge": purge,
    "/actions/force": force,
    "/actions/pause": pause,
    "/actions/resume": resume,
}
