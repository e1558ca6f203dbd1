"""The registry of pages: path, title in the menu, template, view.

A later panel (storage commitments, the fleet) is one view function in its own module and
one template under templates/, added here as one `Panel` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.web import views


@dataclass(frozen=True)
class Panel:
    """One page of the menu."""

    path: str
    title: str
    template: str
    view: Callable[[views.Context, Mapping[str, str]], dict[str, Any]]


PANELS = (
    Panel("/", "Overview", "overview.html", views.overview),
    Panel("/destinations", "Destinations", "destinations.html", views.destinations),
    Panel("/dead-letters", "Dead letters", "dead_letters.html", views.dead_letters),
    Panel("/decisions", "Recent decisions", "decisions.html", views.decisions),
    Panel("/trace", "Trace", "trace.html", views.trace),
    Panel("/studies", "Studies collecting", "studies.html", views.studies),
)
BY_PATH = {p.path: p for p in PANELS}
