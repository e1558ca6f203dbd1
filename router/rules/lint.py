"""Rule-file lint: rules that can never match (shadowed, or only for senders `callers`
refuses), destinations and groups nothing uses.

Pure: a validated Config (and the raw data, for the group names that validation resolves
away) in, findings out. Each finding names a key path; the loader turns it into
FILE:LINE:COL. Shadowing is judged conservatively: a rule is reported only when an
earlier rule provably matches every C-STORE it matches, so a report is always true and
some dead rules (e.g. behind two rules that together cover them) go unreported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from router.config.actions import Action, ForwardAction, NotifyAction, StoreAction
from router.config.match import Match, TagCondition, TagTest
from router.config.model import Config
from router.config.source import key_path

Loc = tuple[str | int, ...]
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Finding:
    """One warning: where (a key path into the rule file) and what."""

    loc: Loc
    message: str
    point_at_key: bool = False  # a mapping entry: its key is the line to show


def lint(
    config: Config, raw: Any = None, line_of: Callable[[Loc], int] | None = None
) -> list[Finding]:
    """Every lint finding for `config`; `raw` is the YAML data, `line_of` locates a rule."""
    return [
        *shadowed_rules(config, line_of),
        *refused_by_callers(config),
        *unused_destinations(config),
        *unused_groups(config, raw),
    ]


def shadowing_rule(config: Config, index: int) -> int | None:
    """The index of the first rule before `index` that matches everything it matches."""
    later = config.rules[index].match
    for i, earlier in enumerate(config.rules[:index]):
        if covers(earlier.match, later):
            return i
    return None


def shadowed_rules(config: Config, line_of: Callable[[Loc], int] | None = None) -> list[Finding]:
    """Rules that an earlier rule always pre-empts (first match wins)."""
    out = []
    for j, rule in enumerate(config.rules):
        i = shadowing_rule(config, j)
        if i is None:
            continue
        earlier = config.rules[i]
        where = f", line {line_of(('rules', i))}" if line_of else ""
        out.append(
            Finding(
                ("rules", j),
                f"{key_path(('rules', j))} ({rule.name}) can never match: "
                f"{key_path(('rules', i))} ({earlier.name}{where})"
                " matches everything it matches",
            )
        )
    return out


def refused_by_callers(config: Config) -> list[Finding]:
    """Rules for calling AE titles that `callers` never lets associate."""
    if config.callers is None:
        return []
    titles = [caller.ae_title for caller in config.callers]
    return [
        Finding(
            ("rules", j),
            f"{key_path(('rules', j))} ({rule.name}) can never match: `callers` lets none of"
            f" its calling AE titles ({', '.join(rule.match.calling_ae)}) associate",
        )
        for j, rule in enumerate(config.rules)
        if rule.match.calling_ae is not None
        and not any(_may_meet(w, t) for w in rule.match.calling_ae for t in titles)
    ]


def _may_meet(a: str, b: str) -> bool:
    """Could one AE title match both patterns? Two globs do unless their fixed starts differ."""
    if _is_glob(a) and _is_glob(b):
        x, y = _fixed_start(a), _fixed_start(b)
        return x.startswith(y) or y.startswith(x)
    return fnmatchcase(b, a) if _is_glob(a) else fnmatchcase(a, b)


def _fixed_start(glob: str) -> str:
    """The literal text before a glob's first wildcard: every match starts with it."""
    return next((glob[:i] for i, c in enumerate(glob) if c in _GLOB_CHARS), glob)


def covers(a: Match, b: Match) -> bool:
    """True when match `a` provably holds for every C-STORE for which `b` holds."""
    return (
        _subset(b.sop_class, a.sop_class)
        and _subset(b.transfer_syntax, a.transfer_syntax)
        and _ae_covers(a.calling_ae, b.calling_ae)
        and _ae_covers(a.called_ae, b.called_ae)
        and _networks_cover(a.peer, b.peer)
        and _tags_cover(a.tags, b.tags)
        # `a` needs not-A. `b` implies not-B, and not-B implies not-A when B covers A.
        and (a.not_ is None or (b.not_ is not None and covers(b.not_, a.not_)))
    )


def _subset(narrow: Sequence[str] | None, wide: Sequence[str] | None) -> bool:
    if wide is None:
        return True
    return narrow is not None and set(narrow) <= set(wide)


def _is_glob(text: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(text)


def _pattern_covers(wide: str, narrow: str) -> bool:
    """A glob covers an exact title it matches, the same glob, and `*` covers all."""
    if wide == narrow or set(wide) == {"*"}:
        return True
    return not _is_glob(narrow) and fnmatchcase(narrow, wide)


def _ae_covers(wide: Sequence[str] | None, narrow: Sequence[str] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(any(_pattern_covers(w, n) for w in wide) for n in narrow)


def _networks_cover(wide: Sequence[Any] | None, narrow: Sequence[Any] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(any(_net_in(n, w) for w in wide) for n in narrow)


def _net_in(inner: Any, outer: Any) -> bool:
    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def _tags_cover(
    wide: Mapping[str, TagCondition] | None, narrow: Mapping[str, TagCondition] | None
) -> bool:
    if not wide:
        return True
    if narrow is None:
        return False
    return all(k in narrow and _condition_covers(c, narrow[k]) for k, c in wide.items())


def _values(condition: TagCondition) -> set[str] | None:
    """The exact values a text or list condition accepts; None for a test."""
    if isinstance(condition, str):
        return {condition}
    if isinstance(condition, list):
        return set(condition)
    return None


def _condition_covers(wide: TagCondition, narrow: TagCondition) -> bool:
    """Identical tests; exact values within a wider list; exact values a glob matches."""
    if wide == narrow:
        return True
    wide_values, narrow_values = _values(wide), _values(narrow)
    if narrow_values is None:
        return False
    if wide_values is not None:
        return narrow_values <= wide_values
    assert isinstance(wide, TagTest)
    return wide.glob is not None and all(fnmatchcase(v, wide.glob) for v in narrow_values)


def _destinations(actions: Sequence[Action]) -> set[str]:
    used = set()
    for action in actions:
        if isinstance(action, StoreAction):
            used.add(action.store.to)
        elif isinstance(action, ForwardAction):
            used.add(action.forward.to)
        elif isinstance(action, NotifyAction):
            used.add(action.notify.to)
    return used


def unused_destinations(config: Config) -> list[Finding]:
    """Destinations that no rule, no `default` and no fixture's `expect` names."""
    used = _destinations(config.default)
    for rule in config.rules:
        used |= _destinations(rule.actions)
    for fixture in config.tests:
        used.update(fixture.expect.forward or (), fixture.expect.store or ())
    return [
        Finding(
            ("destinations", name),
            f"destinations.{name}: no rule, default or fixture uses this destination",
            point_at_key=True,
        )
        for name in config.destinations
        if name not in used
    ]


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _match_names(match: Any) -> list[str]:
    """The SOP class names (group names among them) a raw match and its `not`s use."""
    out: list[str] = []
    while isinstance(match, dict):
        out += _names(match.get("sop_class"))
        match = match.get("not")
    return out


def unused_groups(config: Config, raw: Any) -> list[Finding]:
    """`sop_class_groups` that no match and no fixture instance names."""
    if not isinstance(raw, dict):
        return []
    used: set[str] = set()
    for rule in raw.get("rules") or ():
        if isinstance(rule, dict):
            used.update(_match_names(rule.get("match")))
    for fixture in raw.get("tests") or ():
        instance = fixture.get("instance") if isinstance(fixture, dict) else None
        if isinstance(instance, dict):
            used.update(_names(instance.get("sop_class")))
    return [
        Finding(
            ("sop_class_groups", name),
            f"sop_class_groups.{name}: no rule or fixture uses this group",
            point_at_key=True,
        )
        for name in config.sop_class_groups
        if name not in used
    ]
