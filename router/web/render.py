"""Jinja2 templates (package data) and the filters that make numbers and times readable."""

from __future__ import annotations

from datetime import datetime

import jinja2


def ago(at: float | None, now: float) -> str:
    """'4 min ago' (or 'in 20 s') for an epoch time; '-' for None."""
    if at is None:
        return "-"
    delta = now - at
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            text = f"{delta / size:.0f} {unit}"
            break
    else:
        text = f"{delta:.0f} s"
    return f"in {text}" if future else f"{text} ago"


def when(at: float | None) -> str:
    """The absolute local time, for the title attribute."""
    return "" if at is None else datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds")


def size(count: float | None) -> str:
    """Bytes with a binary unit."""
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def environment() -> jinja2.Environment:
    """The templates with autoescaping and the filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("router.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(ago=ago, when=when)
    env.filters["size"] = size
    return env
