"""The rule engine: a validated Config and the facts of one C-STORE in, a Decision out.

Pure: no I/O, no clock, no pynetdicom types. Rules are tried in order and the first whose
match holds decides; `default` decides when none does. Tags are needed only when a rule
that could still match uses `tags`: `decide()` evaluates matches three-valued (True,
False, or None for "needs tags that were not read"), so the caller can call it without
tags first and read the header only when the answer is `NeedsTags`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from router.config.actions import (
    Action,
    ForwardAction,
    ModifyAction,
    RejectAction,
    StoreAction,
    WarnAction,
)
from router.config.match import Match, TagCondition, TagTest
from router.config.model import Config
from router.dicom import status
from router.dicom.tags import TagValues


@dataclass(frozen=True)
class Facts:
    """What is known about one C-STORE; `tags` is None until the header was read."""

    sop_class_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    transfer_syntax: str
    tags: Mapping[str, TagValues] | None = None


@dataclass(frozen=True)
class Decision:
    """The rule that decided, its actions, and the status they answer when all succeed."""

    rule: str
    actions: tuple[Action, ...]
    status: int
    reasons: tuple[str, ...]

    @property
    def forwards(self) -> list[str]:
        """Names of the destinations forwarded to."""
        return [a.forward.to for a in self.actions if isinstance(a, ForwardAction)]

    @property
    def stores(self) -> list[str]:
        """Names of the filesystem destinations stored to."""
        return [a.store.to for a in self.actions if isinstance(a, StoreAction)]


@dataclass(frozen=True)
class NeedsTags:
    """`decide()` could not finish: a rule that may match uses tags that were not read."""

    rule: str


def decide(config: Config, facts: Facts) -> Decision | NeedsTags:
    """Apply the rules in order; the first match decides, else `default`."""
    skipped: list[str] = []
    for rule in config.rules:
        held, why = _match(rule.match, facts)
        if held is None:
            return NeedsTags(rule.name)
        if held:
            return _decision(rule.name, rule.actions, (*skipped, *why))
        skipped.append(f"rule {rule.name!r} skipped: {why[-1]}")
    return _decision("default", config.default, (*skipped, "no rule matched"))


def also_matching(config: Config, rule: str, facts: Facts) -> list[str]:
    """The rules after `rule` that would also match `facts` (with tags): it shadows them."""
    names = [r.name for r in config.rules]
    if rule not in names:
        return []
    later = config.rules[names.index(rule) + 1 :]
    return [r.name for r in later if _match(r.match, facts)[0]]


def wanted_tags(config: Config) -> frozenset[str]:
    """Every keyword a rule's `tags` reads (to convert only those from the header)."""
    out: set[str] = set()
    for rule in config.rules:
        match: Match | None = rule.match
        while match is not None:
            out.update(match.tags or {})
            match = match.not_
    return frozenset(out)


def planned_status(actions: Sequence[Action]) -> int:
    """The status answered when every action succeeds (before any sync forward's answer)."""
    for action in actions:
        if isinstance(action, RejectAction):
            return action.reject
    for action in actions:
        if isinstance(action, WarnAction):
            return action.warn
    modifies = [a.modify for a in actions if isinstance(a, ModifyAction)]
    if any(m.remove for m in modifies):
        return status.ELEMENTS_DISCARDED  # PS3.4 B.2.3
    if modifies:
        return status.COERCION
    return status.SUCCESS


def _decision(rule: str, actions: Sequence[Action], reasons: Sequence[str]) -> Decision:
    return Decision(rule, tuple(actions), planned_status(actions), tuple(reasons))


def _match(match: Match, facts: Facts) -> tuple[bool | None, list[str]]:
    """(True, False or None when tags are needed, reasons); conditions are ANDed."""
    why: list[str] = []
    unknown = False
    for held, reason in _conditions(match, facts):
        if held is None:
            unknown = True
            continue
        why.append(reason)
        if not held:
            return False, why
    return (None if unknown else True), why or ["an empty match always holds"]


def _conditions(match: Match, facts: Facts) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = []
    if match.sop_class is not None:
        out.append(_is("sop_class", facts.sop_class_uid, facts.sop_class_uid in match.sop_class))
    if match.calling_ae is not None:
        out.append(
            _is("calling_ae", facts.calling_ae, _glob_any(facts.calling_ae, match.calling_ae))
        )
    if match.called_ae is not None:
        out.append(_is("called_ae", facts.called_ae, _glob_any(facts.called_ae, match.called_ae)))
    if match.peer is not None:
        out.append(_is("peer", facts.peer, in_networks(facts.peer, match.peer)))
    if match.transfer_syntax is not None:
        in_list = facts.transfer_syntax in match.transfer_syntax
        out.append(_is("transfer_syntax", facts.transfer_syntax, in_list))
    for keyword, condition in (match.tags or {}).items():
        if facts.tags is None:
            out.append((None, f"tags.{keyword} needs the header"))
            continue
        values = facts.tags.get(keyword)
        out.append(_is(f"tags.{keyword}", values, _tag_holds(values, condition)))
    if match.not_ is not None:
        inner, why = _match(match.not_, facts)
        negated = None if inner is None else not inner
        out.append((negated, f"not ({'; '.join(why)}) is {negated}"))
    return out


def _is(key: str, value: object, held: bool) -> tuple[bool, str]:
    shown = (
        "\\".join(value) if isinstance(value, tuple) else ("(missing)" if value is None else value)
    )
    return held, f"{key} {shown!s} {'matches' if held else 'does not match'}"


def _glob_any(value: str, patterns: Sequence[str]) -> bool:
    # AE titles are case-sensitive (PS3.5); fnmatchcase keeps them so.
    return any(fnmatchcase(value, p) for p in patterns)


def caller_allowed(config: Config, calling_ae: str, peer: str) -> bool:
    """True when `callers` is absent or one entry matches this AE title and address."""
    if config.callers is None:
        return True
    return any(
        fnmatchcase(calling_ae, caller.ae_title)
        and (caller.hosts is None or in_networks(peer, caller.hosts))
        for caller in config.callers
    )


def commitment_port(config: Config, calling_ae: str, peer: str) -> int | None:
    """The commitment_port of the first caller entry matching this AE title and address."""
    if config.storage_commitment is None:
        return None
    for caller in config.callers or ():
        if fnmatchcase(calling_ae, caller.ae_title) and (
            caller.hosts is None or in_networks(peer, caller.hosts)
        ):
            return caller.commitment_port
    return None


def in_networks(peer: str, networks: Sequence[object]) -> bool:
    """True when `peer` (an IP, IPv4-mapped IPv6 too) lies in one of `networks`."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in n for n in networks)  # type: ignore[operator]


def _tag_holds(values: TagValues | None, condition: TagCondition) -> bool:
    """A missing tag never matches, unless `present: false` asks for it."""
    if isinstance(condition, TagTest) and condition.present is not None:
        return bool(values and any(values)) == condition.present
    if values is None:
        return False
    # A multi-valued element matches when any value does, or the whole backslash-joined text.
    candidates = (*values, "\\".join(values))
    if isinstance(condition, str):
        return condition in candidates
    if isinstance(condition, list):
        return any(c in candidates for c in condition)
    if condition.glob is not None:
        return any(fnmatchcase(v, condition.glob) for v in candidates)
    assert condition.regex is not None
    return any(condition.regex.fullmatch(v) for v in candidates)
