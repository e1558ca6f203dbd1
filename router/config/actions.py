"""A rule's `actions`: store, forward, notify, reject, warn, modify, discard, and their
combinations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router.config.base import Strict, context
from router.config.destinations import OnExists
from router.config.fields import FailureStatus, Keyword, Text, WarningStatus
from router.config.studies import Level
from router.errors import did_you_mean


def _ref(kind: str, label: str) -> Callable[[str, ValidationInfo], str]:
    """A validator: the value names a destination of `kind` the file defines."""

    def check(value: str, info: ValidationInfo) -> str:
        names: set[str] = context(info, kind)
        if value not in names:
            other = "dicom" if kind == "filesystem" else "filesystem"
            if value in context(info, other):
                shown = "DICOM" if other == "dicom" else other
                raise ValueError(f"no {label} named {value!r}: it is a {shown} destination")
            tail = did_you_mean(value, names) or f" (defined: {', '.join(sorted(names)) or 'none'})"
            raise ValueError(f"no {label} named {value!r}{tail}")
        return value

    return check


def _to(value: Any) -> Any:
    return {"to": value} if isinstance(value, str) else value


class StoreSpec(Strict):
    """`store: NAME` or `store: {to: NAME, on_exists: ...}`."""

    to: str = Field(description="the filesystem destination to write to")
    on_exists: OnExists | None = Field(
        None,
        description="when the file exists: overwrite, keep or rename; default: the destination's",
    )

    _check_to = field_validator("to")(_ref("filesystem", "filesystem destination"))


class ForwardSpec(Strict):
    """`forward: NAME` or `forward: {to: NAME, mode: queued|sync, collect: series|study}`."""

    to: str = Field(description="the DICOM or STOW-RS destination to send to")
    mode: Literal["queued", "sync"] = Field(
        "queued",
        description="queued: spooled and delivered in the background; sync: the sender waits "
        "for the destination's answer (DICOM only)",
    )

    collect: Level | None = Field(
        None,
        description="series or study: held in the spool until the series or study is "
        "complete (see studies:), then sent whole: over one association (DICOM) or in one "
        "request (STOW-RS); absent: per instance",
    )

    _check_to = field_validator("to")(_ref("dicom", "DICOM destination"))

    @model_validator(mode="after")
    def _no_sync_stow(self, info: ValidationInfo) -> ForwardSpec:
        if self.mode == "sync" and self.to in context(info, "stow"):
            raise ValueError(
                f"{self.to!r} is a STOW-RS destination: forward to it with mode: queued "
                "(sync forwarding is DICOM only)"
            )
        if self.collect and self.mode == "sync":
            raise ValueError("collect holds instances in the spool: it needs mode: queued")
        return self


class NotifySpec(Strict):
    """`notify: {to: WEBHOOK, on: series|study, include: [...]}`."""

    to: str = Field(description="the webhook destination told when the unit is complete")
    on: Level = Field(description="series or study: one POST per completed series or study")
    include: list[Literal["PatientID", "AccessionNumber"]] = Field(
        default_factory=list,
        description="patient data added to the JSON body; none by default",
    )

    _check_to = field_validator("to")(_ref("webhook", "webhook destination"))

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on` key as the boolean true: it means `on` here.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class ModifySpec(Strict):
    """Remove `private` or keywords, set keywords to values."""

    remove: list[Literal["private"] | Keyword] = Field(
        default_factory=list,
        description="private (every private element) and keywords to remove from the top level",
    )
    set: dict[Keyword, Text | list[Text]] = Field(
        default_factory=dict, description="keyword -> value (text, or a list for several values)"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> ModifySpec:
        if not self.remove and not self.set:
            raise ValueError("modify needs remove or set")
        return self


class StoreAction(Strict):
    """Write the instance to a filesystem destination."""

    store: Annotated[StoreSpec, BeforeValidator(_to)] = Field(
        description="NAME or {to: NAME, on_exists: overwrite|keep|rename}"
    )


class ForwardAction(Strict):
    """Send the instance to a DICOM node or a STOW-RS service."""

    forward: Annotated[ForwardSpec, BeforeValidator(_to)] = Field(
        description="NAME or {to: NAME, mode: queued|sync}"
    )


class NotifyAction(Strict):
    """Tell a webhook, once, that the instance's series or study is complete."""

    notify: NotifySpec = Field(description="{to: WEBHOOK, on: series|study, include: [...]}")


class RejectAction(Strict):
    """Answer a failure status and keep nothing."""

    reject: FailureStatus = Field(description="the C-STORE failure status to answer, in hex")


class WarnAction(Strict):
    """Answer a warning status once the other actions succeed."""

    warn: WarningStatus = Field(description="0xB000, 0xB006 or 0xB007")


class ModifyAction(Strict):
    """Change the instance for the actions after this one."""

    modify: ModifySpec = Field(description="{remove: [...], set: {...}}")


class DeidentifyAction(Strict):
    """Replace the instance by its de-identified copy for the actions after this one."""

    deidentify: str = Field(description="the name of a profile under deidentify:")

    @field_validator("deidentify")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        names: set[str] = context(info, "deidentify")
        if value not in names:
            tail = did_you_mean(value, names) or f" (defined: {', '.join(sorted(names)) or 'none'})"
            raise ValueError(f"no deidentify profile named {value!r}{tail}")
        return value


class DiscardAction(Strict):
    """Accept the instance and keep nothing."""

    discard: Literal[True] = Field(True, description="written as the bare word discard")


ACTION_KINDS = (
    "store",
    "forward",
    "notify",
    "reject",
    "warn",
    "modify",
    "deidentify",
    "discard",
)


def _action_kind(value: Any) -> str | None:
    if value == "discard":
        return "discard"
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in ACTION_KINDS else None
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return None


def _bare_discard(value: Any) -> Any:
    if value == "discard":
        return {"discard": True}
    key = next(iter(value)) if isinstance(value, dict) and len(value) == 1 else value
    if isinstance(key, str) and key not in ACTION_KINDS:
        tail = did_you_mean(key, ACTION_KINDS) or f" (one of: {', '.join(ACTION_KINDS)})"
        raise ValueError(f"unknown action {key!r}{tail}")
    return value


Action = Annotated[
    Annotated[StoreAction, Tag("store")]
    | Annotated[ForwardAction, Tag("forward")]
    | Annotated[NotifyAction, Tag("notify")]
    | Annotated[RejectAction, Tag("reject")]
    | Annotated[WarnAction, Tag("warn")]
    | Annotated[ModifyAction, Tag("modify")]
    | Annotated[DeidentifyAction, Tag("deidentify")]
    | Annotated[DiscardAction, Tag("discard")],
    Discriminator(
        _action_kind,
        custom_error_type="unknown_action",
        custom_error_message="an action is one of: " + ", ".join(ACTION_KINDS),
    ),
    BeforeValidator(_bare_discard),
]


def _check_actions(actions: list[Any]) -> list[Any]:
    kinds = [_action_kind(a) for a in actions]
    if "reject" in kinds and len(kinds) > 1:
        raise ValueError("reject keeps nothing: it must be the rule's only action")
    if "discard" in kinds and set(kinds) - {"discard", "warn"}:
        raise ValueError("discard keeps nothing: only a warn may go with it")
    if kinds.count("warn") > 1:
        raise ValueError("at most one warn per action list")
    return actions


Actions = Annotated[list[Action], Field(min_length=1), AfterValidator(_check_actions)]
