"""A rule's `match`: conditions on one C-STORE, and the SOP class names and groups it uses."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    IPvAnyNetwork,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router.config.base import Strict, context
from router.config.fields import Keyword, StrList, Text, one_or_many
from router.dicom import sopclass
from router.errors import UnknownName


class TagTest(Strict):
    """One of glob, regex or present."""

    glob: str | None = Field(None, description="a value matches this glob (case-sensitive)")
    regex: re.Pattern[str] | None = Field(
        None, description="a value matches this regular expression, anchored at both ends"
    )
    present: bool | None = Field(
        None, description="true: present with a non-empty value; false: missing or empty"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TagTest:
        if sum(v is not None for v in (self.glob, self.regex, self.present)) != 1:
            raise ValueError("write exactly one of glob, regex, present")
        return self


def _condition_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    return "test" if isinstance(value, dict | TagTest) else "text"


TagCondition = Annotated[
    Annotated[Text, Tag("text")]
    | Annotated[list[Text], Tag("list")]
    | Annotated[TagTest, Tag("test")],
    Discriminator(_condition_kind),
]


def sop_classes(value: list[str], groups: dict[str, list[str]]) -> tuple[str, ...]:
    """SOP class names, UIDs or group names -> their UIDs, in order, without repeats."""
    uids: list[str] = []
    for name in value:
        if name in groups:
            uids.extend(groups[name])
            continue
        try:
            uids.append(sopclass.resolve_sop_class(name))
        except UnknownName:
            choices = sopclass.sop_class_names() | set(groups)
            raise UnknownName("SOP class or group", name, choices) from None
    return tuple(dict.fromkeys(uids))


def _sop_class_name(value: str, info: ValidationInfo) -> str:
    sop_classes([value], context(info, "groups"))
    return value


def _storage_name(value: str) -> str:
    sopclass.resolve_sop_class(value)
    return value


GroupMembers = Annotated[
    list[Annotated[str, AfterValidator(_storage_name)]],
    BeforeValidator(one_or_many),
    Field(min_length=1),
]

SopClassNames = Annotated[
    list[Annotated[str, AfterValidator(_sop_class_name)]],
    BeforeValidator(one_or_many),
    Field(min_length=1),
]


class Match(Strict):
    """Conditions on one C-STORE; all keys must hold, a list means any of."""

    sop_class: SopClassNames | None = Field(
        None, description="the Affected SOP Class is one of these keywords, UIDs or group names"
    )
    calling_ae: StrList | None = Field(
        None, description="the sender's AE title matches one of these AE titles or globs"
    )
    called_ae: StrList | None = Field(
        None, description="the AE title the sender called matches one of these AE titles or globs"
    )
    peer: Annotated[list[IPvAnyNetwork], BeforeValidator(one_or_many)] | None = Field(
        None, description="the sender's IP address is in one of these IPs or CIDRs"
    )
    transfer_syntax: StrList | None = Field(
        None, description="the accepted transfer syntax is one of these keywords or UIDs"
    )
    tags: dict[Keyword, TagCondition] | None = Field(
        None, description="DICOM keyword -> text, list of texts, or {glob|regex|present}"
    )
    not_: Match | None = Field(None, alias="not", description="a nested match that must not hold")

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("sop_class")
    @classmethod
    def _resolve_sop_class(cls, value: list[str] | None, info: ValidationInfo) -> Any:
        return None if value is None else list(sop_classes(value, context(info, "groups")))

    @field_validator("transfer_syntax")
    @classmethod
    def _resolve_ts(cls, value: list[str] | None) -> Any:
        return None if value is None else [sopclass.resolve_transfer_syntax(v) for v in value]
