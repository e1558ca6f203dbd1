"""What a rule set needs from every received header, worked out once per config version.

The pipeline reads only the header elements the rules and the store templates use; the
templates and the action names shown in logs are made here once, not per C-STORE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from router.actions.templates import Template, template_fields
from router.config.actions import Action, ForwardAction, NotifyAction
from router.config.deid import DeidProfile
from router.config.destinations import FilesystemDestination
from router.config.studies import Studies
from router.dicom import header as dataset
from router.rules.engine import wanted_tags
from router.rules.ruleset import LoadedConfig


@dataclass(frozen=True)
class Plan:
    """What a rule set needs from every header: computed once per config version."""

    keywords: frozenset[str]  # everything read from the header
    tags: frozenset[str] = frozenset()  # what the rules' `tags` match on
    templates: Mapping[str, tuple[Template, str]] = field(default_factory=dict)
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # rule -> actions
    deidentify: Mapping[str, DeidProfile] = field(default_factory=dict)  # deidentify:


def make_plan(loaded: LoadedConfig) -> Plan:
    """The plan of one loaded config: header keywords, store templates, action names."""
    tags = wanted_tags(loaded.config)
    keywords = set(tags)
    templates = {}
    for name, dest in loaded.config.destinations.items():
        if isinstance(dest, FilesystemDestination):
            keywords.update(template_fields(dest.path))
            templates[name] = (Template(loaded.base_dir, dest.path), dest.on_exists)
    if collects(loaded):
        keywords.update(ORDER_KEYWORDS)
    if loaded.config.deidentify:
        keywords.add("BurnedInAnnotation")  # burned_in: refuse reads it
    names = {rule.name: action_names(rule.actions) for rule in loaded.config.rules}
    names["default"] = action_names(loaded.config.default)
    return Plan(frozenset(keywords), tags, templates, names, loaded.config.deidentify)


ORDER_KEYWORDS = ("SeriesNumber", "InstanceNumber")  # the order a collected unit is sent in


def collects(loaded: LoadedConfig) -> bool:
    """Whether any action holds instances for their series or study (collect, notify)."""
    actions = [*loaded.config.default, *(a for r in loaded.config.rules for a in r.actions)]
    return any(
        isinstance(a, NotifyAction) or (isinstance(a, ForwardAction) and a.forward.collect)
        for a in actions
    )


def collection_notes(actions: Sequence[Action], studies: Studies) -> list[str]:
    """What `explain` says of the actions that wait for a series or study to complete."""
    when = f"quiet {studies.quiet:g} s, max_wait {studies.max_wait:g} s" + (
        ", or the association's release" if studies.on_release else ""
    )
    notes = []
    for action in actions:
        if isinstance(action, ForwardAction) and action.forward.collect:
            notes.append(
                f"forward:{action.forward.to} collected per {action.forward.collect},"
                f" sent when complete ({when})"
            )
        elif isinstance(action, NotifyAction):
            notes.append(
                f"notify:{action.notify.to} one POST per {action.notify.on} when complete ({when})"
            )
    return notes


def action_names(actions: Sequence[Action]) -> tuple[str, ...]:
    """Short text for each action, for logs and `explain`."""
    out = []
    for action in actions:
        ((kind, spec),) = action.model_dump(exclude_none=True).items()
        if isinstance(spec, dict) and "to" in spec:
            mode = spec.get("mode")
            unit = spec.get("collect") or spec.get("on")
            shown = f"({mode})" if mode == "sync" else f"({unit})" if unit else ""
            out.append(f"{kind}:{spec['to']}{shown}")
        elif isinstance(spec, int) and not isinstance(spec, bool):
            out.append(f"{kind}:0x{spec:04X}")
        else:
            out.append(kind)
    return tuple(out)


def lookup(header: Dataset) -> Callable[[str], str | None]:
    """A store template's view of a header: a keyword's value as text, None when absent."""

    def value(keyword: str) -> str | None:
        tag = keyword_tag(keyword)
        items = dataset.text_values(header.get(tag))  # a tag key gets the element
        return "\\".join(items) if items else None

    return value


@functools.cache
def keyword_tag(keyword: str) -> BaseTag:
    """A DICOM keyword's tag (pydicom resolves the keyword on every lookup otherwise)."""
    return Tag(keyword)
