"""The rule file: one Pydantic model tree, the single source of truth.

Everything is validated when the file loads, nothing at routing time: SOP classes and
transfer syntaxes resolve to UIDs, destinations and groups must exist, status codes must
belong to their action's class. `load()` (in `router.rules.ruleset`) adds FILE:LINE:COL to
every error. The JSON Schema (`dicom-router schema`) is generated from these models.

This module holds the root (`Config`), its rules and fixtures; the sections live beside it
(`base`, `listen`, `destinations`, `http`, `match`, `actions`, `fleet`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from router.config.actions import Actions
from router.config.base import Strict, context
from router.config.commitment import StorageCommitment
from router.config.deid import DeidProfile
from router.config.destinations import Destination, destination_kind
from router.config.fields import AETitle, ByteSize, Keyword, Name, Status, Text, one_or_many
from router.config.fleet import Fleet
from router.config.listen import Caller, Listen, Metrics
from router.config.match import GroupMembers, Match, sop_classes
from router.config.studies import Studies
from router.dicom import sopclass

__all__ = ["Config", "Expect", "Fixture", "FixtureInstance", "Rule", "validation_context"]


class Rule(Strict):
    """A named match and the actions run when it is the first to hold."""

    name: Name = Field(description="unique, not 'default'; shown in logs, explain and fixtures")
    match: Match = Field(Match(), description="the conditions; absent or empty means always")
    actions: Actions = Field(description="run in order when this rule decides")


class FixtureInstance(Strict):
    """A made-up C-STORE for a fixture."""

    # The defaults are names too: resolve them to UIDs like written values.
    model_config = ConfigDict(validate_default=True)

    sop_class: str = Field(
        "CTImageStorage", description="a SOP class name, UID or group (its first member)"
    )
    calling_ae: AETitle = Field("FIXTURE", description="the sender's AE title")
    called_ae: AETitle | None = Field(
        None, description="the AE title called; default: listen.ae_title"
    )
    peer: str = Field("127.0.0.1", description="the sender's IP address")
    transfer_syntax: str = Field(
        "ExplicitVRLittleEndian", description="a transfer syntax keyword or UID"
    )
    tags: dict[Keyword, Text | list[Text]] = Field(
        default_factory=dict,
        description="keyword -> text or list of texts; elements not given are missing",
    )

    @field_validator("sop_class")
    @classmethod
    def _sop(cls, value: str, info: ValidationInfo) -> str:
        return sop_classes([value], context(info, "groups"))[0]

    @field_validator("transfer_syntax")
    @classmethod
    def _ts(cls, value: str) -> str:
        return sopclass.resolve_transfer_syntax(value)


class Expect(Strict):
    """What must happen to a fixture instance; keys left out are not checked."""

    associate: Literal["accepted", "rejected"] | None = Field(
        None,
        description="accepted, or rejected: `callers` refuses the association (A-ASSOCIATE-RJ), "
        "so no rule decides",
    )
    rule: str | None = Field(None, description="the rule that decides, or 'default'")
    status: Status | None = Field(None, description="the status answered, in hex")
    forward: list[str] | None = Field(
        None, description="the destinations forwarded to, in action order; [] for none"
    )
    store: list[str] | None = Field(
        None, description="the filesystem destinations stored to, in order; [] for none"
    )


class Fixture(Strict):
    """A `tests:` entry: `check` and every reload run it."""

    name: str = Field(description="shown by check and in the errors of a failing fixture")
    instance: FixtureInstance = Field(description="the made-up C-STORE")
    expect: Expect = Field(description="what must happen to it")


class Config(Strict):
    """A version-1 rule file."""

    version: Literal[1] = Field(description="the rule file's format, always 1")
    listen: Listen = Field(description="where and as whom the router accepts associations")
    spool: str = Field(
        "spool", description="the folder for received instances, queues and the decision log"
    )
    spool_min_free: ByteSize = Field(
        2 * 1024**3,
        description="free space (a size, e.g. 2GiB) below which new instances get 0xA700",
    )
    callers: list[Caller] | None = Field(None, description="when present, only these may associate")
    metrics: Metrics | None = Field(None, description="Prometheus /metrics; off when absent")
    studies: Studies = Field(
        Studies(), description="when a collected series or study is complete (collect, notify)"
    )
    fleet: Fleet | None = Field(
        None, description="mirror decisions and queues to PostgreSQL for the fleet view"
    )
    storage_commitment: StorageCommitment | None = Field(
        None, description="answer Storage Commitment requests; absent: they are refused"
    )
    destinations: dict[Name, Destination] = Field(
        default_factory=dict,
        description="name -> DICOM node (ae_title), STOW-RS service (url) or folder (path)",
    )
    deidentify: dict[Name, DeidProfile] = Field(
        default_factory=dict,
        description="name -> de-identification profile, used by deidentify actions",
    )
    sop_class_groups: dict[Name, GroupMembers] = Field(
        default_factory=dict, description="name -> SOP class names or UIDs, for match.sop_class"
    )
    rules: list[Rule] = Field(
        default_factory=list, description="tried in order: the first whose match holds decides"
    )
    default: Actions = Field(description="the actions when no rule matches")
    tests: list[Fixture] = Field(
        default_factory=list, description="fixtures run by check and every reload"
    )

    @field_validator("sop_class_groups")
    @classmethod
    def _groups(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: list(sop_classes(names, {})) for name, names in value.items()}

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen or rule.name == "default":
                raise ValueError(f"rule name {rule.name!r} is used twice (or is 'default')")
            seen.add(rule.name)
        return rules


def validation_context(data: Any) -> dict[str, Any]:
    """Names that fields refer to, taken from raw data before validation."""
    ctx: dict[str, Any] = {
        "filesystem": set(),
        "dicom": set(),
        "stow": set(),
        "webhook": set(),
        "groups": {},
        "deidentify": set(),
    }
    if not isinstance(data, dict):
        return ctx
    dests = data.get("destinations")
    if isinstance(dests, dict):
        for name, body in dests.items():
            kind = destination_kind(body)
            ctx[kind].add(name)
            if kind == "stow":  # forwarded to like a DICOM node
                ctx["dicom"].add(name)
    profiles = data.get("deidentify")
    if isinstance(profiles, dict):
        ctx["deidentify"].update(str(name) for name in profiles)
    groups = data.get("sop_class_groups")
    if isinstance(groups, dict):
        for name, members in groups.items():
            try:
                ctx["groups"][name] = list(sop_classes(one_or_many(members), {}))
            except (ValueError, TypeError):
                ctx["groups"][name] = []
    return ctx
