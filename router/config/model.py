"""The rule file: one Pydantic model tree, the single source of truth.

Everything is validated when the file loads, nothing at routing time: SOP classes and
transfer syntaxes resolve to UIDs, destinations and groups must exist, status codes must
belong to their action's class. `load()` (in `router.rules.ruleset`) adds FILE:LINE:COL to every
error. The JSON Schema (`dicom-router schema`) is generated from these models.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
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
from pydantic_core import PydanticCustomError

from router.config.fields import (
    AEPattern,
    AETitle,
    ByteSize,
    FailureStatus,
    Keyword,
    Name,
    Seconds,
    Status,
    StrList,
    Text,
    WarningStatus,
    keyword,
    one_or_many,
)
from router.dicom import sopclass


def _context(info: ValidationInfo, key: str) -> Any:
    return (info.context or {}).get(key, {})


class Strict(BaseModel):
    """Base of every rule-file model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = {f.alias or n for n, f in cls.model_fields.items()}
            for key in data:
                if key not in allowed:
                    hint = sopclass.suggest(str(key), allowed)
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'{hint}",
                        {"key": key, "hint": f"; did you mean {hint[0]!r}?" if hint else ""},
                    )
        return data


# --- listen, callers -------------------------------------------------------------------


class TLS(Strict):
    """TLS for the listener; relative paths resolve against the rule file's folder."""

    certificate: str
    private_key: str
    ca_certificates: str | None = None
    require_client_certificate: bool = True


class Listen(Strict):
    """Where and as whom the router accepts associations."""

    ae_title: AETitle = Field(description="our AE title (1-16 chars)")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(32, ge=1, le=1000, description="in total, over all workers")
    max_pdu: int = Field(262144, ge=0, description="our maximum PDU length; 0 = unlimited")
    network_timeout: Seconds = Field(
        60.0, gt=0, description="a sender silent this long (idle or mid-transfer) is dropped"
    )
    tls: TLS | None = None
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="receiving processes on the port; default: the CPUs, at most 8; 1: one process",
    )


class Caller(Strict):
    """One sender allowed to associate: AE title or glob, optionally from given hosts only."""

    ae_title: AEPattern
    hosts: list[IPvAnyNetwork] | None = Field(None, description="IPs or CIDRs")


class Metrics(Strict):
    """The Prometheus endpoint: /metrics, /healthz and /readyz on one port."""

    host: str = Field("127.0.0.1", description="address to serve on; loopback by default")
    port: int = Field(9110, ge=1, le=65535)


# --- destinations ----------------------------------------------------------------------

Policy = Literal["delivered", "retry", "dead_letter"]
_RANGE = re.compile(r"^0x([0-9A-Fa-f]{4})(?:-0x([0-9A-Fa-f]{4}))?$")


class Retry(Strict):
    """Exponential backoff with jitter between delivery attempts."""

    max_attempts: int = Field(10, ge=1)
    initial_delay: Seconds = 2.0
    max_delay: Seconds = 300.0


def _status_key(key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        key = f"0x{key:04X}"
    text = str(key)
    if text in ("warning", "failure"):
        return text
    m = _RANGE.match(text)
    if not m:
        raise ValueError(
            f"on_status key {key!r}: write warning, failure, a code (0x0124) "
            "or a range (0xA900-0xA9FF)"
        )
    low, high = m.group(1).upper(), (m.group(2) or "").upper()
    return f"0x{low}-0x{high}" if high else f"0x{low}"


StatusKey = Annotated[str, BeforeValidator(_status_key)]


class DestinationTLS(Strict):
    """TLS to a DICOM destination; relative paths resolve against the rule file's folder."""

    ca_certificates: str | None = Field(
        None, description="PEM file of the CAs that sign the destination's certificate"
        "; default: the system's CAs"
    )
    certificate: str | None = Field(None, description="our client certificate (PEM), if asked")
    private_key: str | None = Field(None, description="the client certificate's key (PEM)")
    server_name: str | None = Field(
        None, description="name the destination's certificate must carry; default: host"
    )
    verify: bool = Field(True, description="false: accept any certificate (`check` warns)")

    @model_validator(mode="after")
    def _key_with_certificate(self) -> DestinationTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("write both certificate and private_key, or neither")
        return self


class DicomDestination(Strict):
    """A DICOM node (PACS, AI node...) that receives C-STOREs from the router."""

    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle | None = Field(None, description="default: listen.ae_title")
    retry: Retry = Retry()
    on_status: dict[StatusKey, Policy] = Field(
        default_factory=dict,
        description="warning / failure / 0xCODE / 0xLOW-0xHIGH -> delivered|retry|dead_letter",
    )
    associations: int = Field(1, ge=1, le=16, description="parallel associations")
    idle_timeout: Seconds = Field(10.0, description="close the association after this idle time")
    connect_timeout: Seconds = 10.0
    dimse_timeout: Seconds = 60.0
    max_pdu: int = Field(262144, ge=0)
    tls: DestinationTLS | None = Field(None, description="TLS 1.2+ (BCP 195) to the destination")


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_OURS = {"authorization", "content-type", "content-length", "transfer-encoding", "accept", "host"}


def _url(value: str) -> str:
    m = re.fullmatch(r"(https?)://([^/?#\s]+)(/[^?#\s]*)?", value.strip())
    if not m:
        raise ValueError(
            f"{value!r} is not a DICOMweb root: write http(s)://host[:port]/path, "
            "e.g. https://pacs.example.org/dicom-web"
        )
    return value.strip().rstrip("/")


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if name.lower() in _OURS:
            raise ValueError(f"the router sets the {name} header itself (auth: for credentials)")
    return value


class BasicAuth(Strict):
    """HTTP basic auth; the password is read from a file or an environment variable."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password_file: str | None = Field(None, description="relative to the rule file's folder")
    password_env: str | None = Field(None, description="an environment variable of the daemon")

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuth:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("basic auth takes exactly one of password_file, password_env")
        return self

    def describe(self) -> str:
        """In words, without the password (logs, errors, `check`)."""
        where = f"file {self.password_file}" if self.password_file else f"${self.password_env}"
        return f"basic auth as {self.username!r}, password from {where}"


class BearerAuth(Strict):
    """`Authorization: Bearer TOKEN`; the token file is read again whenever it changes."""

    type: Literal["bearer"]
    token_file: str = Field(description="relative to the rule file's folder")

    def describe(self) -> str:
        """In words, without the token."""
        return f"bearer token from file {self.token_file}"


HttpAuth = Annotated[BasicAuth | BearerAuth, Field(discriminator="type")]


class StowBatch(Strict):
    """How many instances one STOW-RS request carries; a larger instance goes alone."""

    max_instances: int = Field(16, ge=1, le=1000)
    max_bytes: ByteSize = Field(64 * 1024**2, ge=1)


class StowDestination(Strict):
    """A DICOMweb STOW-RS service: instances are POSTed to `{url}/studies`."""

    url: Annotated[str, AfterValidator(_url)] = Field(
        description="the DICOMweb root, e.g. http://pacs:8042/dicom-web"
    )
    auth: HttpAuth | None = None
    headers: Annotated[dict[str, str], AfterValidator(_headers)] = Field(
        default_factory=dict, description="extra HTTP headers sent with every request"
    )
    verify_tls: bool = Field(True, description="check the server's certificate (https)")
    ca_certificates: str | None = Field(None, description="CA bundle (PEM) to check it against")
    proxy: str | None = Field(None, description="HTTP(S) proxy URL; the environment's is not used")
    batch: StowBatch = StowBatch()
    retry: Retry = Retry()
    on_status: dict[StatusKey, Policy] = Field(
        default_factory=dict,
        description="FailureReason / WarningReason codes -> delivered|retry|dead_letter",
    )
    connections: int = Field(1, ge=1, le=16, description="parallel requests")
    idle_timeout: Seconds = Field(10.0, description="close the connection after this idle time")
    connect_timeout: Seconds = 10.0
    timeout: Seconds = Field(120.0, gt=0, description="longest silence while sending or waiting")

    def describe(self) -> str:
        """Endpoint, auth, TLS, extra header names and batch limits; never a secret."""
        parts = [self.auth.describe() if self.auth else "no auth"]
        if self.url.startswith("https:"):
            parts.append("TLS verified" if self.verify_tls else "TLS NOT verified")
        if self.headers:
            parts.append(f"headers {', '.join(self.headers)}")
        parts.append(f"batches of {self.batch.max_instances} / {self.batch.max_bytes} bytes")
        return f"STOW-RS {self.url}/studies ({'; '.join(parts)})"


OnExists = Literal["overwrite", "keep", "rename"]


def _template(value: str) -> str:
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        specs = [(spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f]
    except ValueError as exc:
        raise ValueError(f"bad path template {value!r}: {exc}") from None
    if any(spec or conv for spec, conv in specs):
        raise ValueError("path template fields take no format spec or conversion: {Keyword}")
    for name in fields:
        if not name:
            raise ValueError("empty {} in path template: write a DICOM keyword, e.g. {PatientID}")
        keyword(name)
    return value


class FilesystemDestination(Strict):
    """A folder; `path` is a template of DICOM keywords below it."""

    path: Annotated[str, AfterValidator(_template)] = Field(
        description="e.g. archive/{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"
    )
    on_exists: OnExists = "overwrite"


def _destination_kind(value: Any) -> str:
    if (isinstance(value, dict) and "url" in value) or isinstance(value, StowDestination):
        return "stow"
    return "filesystem" if isinstance(value, dict) and "path" in value else "dicom"


Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")]
    | Annotated[FilesystemDestination, Tag("filesystem")]
    | Annotated[StowDestination, Tag("stow")],
    Discriminator(_destination_kind),
]

# --- match -----------------------------------------------------------------------------


class TagTest(Strict):
    """One of glob, regex or present."""

    glob: str | None = None
    regex: re.Pattern[str] | None = None
    present: bool | None = None

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


def _sop_classes(value: list[str], groups: dict[str, list[str]]) -> tuple[str, ...]:
    uids: list[str] = []
    for name in value:
        if name in groups:
            uids.extend(groups[name])
            continue
        try:
            uids.append(sopclass.resolve_sop_class(name))
        except sopclass.UnknownName:
            choices = sopclass.sop_class_names() | set(groups)
            raise ValueError(
                str(
                    sopclass.UnknownName(
                        "SOP class or group", name, sopclass.suggest(name, choices)
                    )
                )
            ) from None
    return tuple(dict.fromkeys(uids))


def _sop_class_name(value: str, info: ValidationInfo) -> str:
    _sop_classes([value], _context(info, "groups"))
    return value


def _storage_name(value: str) -> str:
    try:
        sopclass.resolve_sop_class(value)
    except sopclass.UnknownName as exc:
        raise ValueError(str(exc)) from None
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

    sop_class: SopClassNames | None = Field(None, description="keywords, UIDs or group names")
    calling_ae: StrList | None = Field(None, description="AE titles or globs")
    called_ae: StrList | None = None
    peer: Annotated[list[IPvAnyNetwork], BeforeValidator(one_or_many)] | None = None
    transfer_syntax: StrList | None = None
    tags: dict[Keyword, TagCondition] | None = None
    not_: Match | None = Field(None, alias="not", description="a nested match that must not hold")

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("sop_class")
    @classmethod
    def _resolve_sop_class(cls, value: list[str] | None, info: ValidationInfo) -> Any:
        return None if value is None else list(_sop_classes(value, _context(info, "groups")))

    @field_validator("transfer_syntax")
    @classmethod
    def _resolve_ts(cls, value: list[str] | None) -> Any:
        return None if value is None else [sopclass.resolve_transfer_syntax(v) for v in value]


# --- actions ---------------------------------------------------------------------------


def _ref(kind: str, label: str) -> Any:
    def check(value: str, info: ValidationInfo) -> str:
        names: set[str] = _context(info, kind)
        if value not in names:
            other = "dicom" if kind == "filesystem" else "filesystem"
            if value in _context(info, other):
                shown = "DICOM" if other == "dicom" else other
                raise ValueError(f"no {label} named {value!r}: it is a {shown} destination")
            others = sorted(names)
            hint = sopclass.suggest(value, names)
            tail = (
                f"; did you mean {hint[0]!r}?"
                if hint
                else f" (defined: {', '.join(others) or 'none'})"
            )
            raise ValueError(f"no {label} named {value!r}{tail}")
        return value

    return check


def _to(value: Any) -> Any:
    return {"to": value} if isinstance(value, str) else value


class StoreSpec(Strict):
    """`store: NAME` or `store: {to: NAME, on_exists: ...}`."""

    to: str
    on_exists: OnExists | None = Field(None, description="default: the destination's")

    _check_to = field_validator("to")(_ref("filesystem", "filesystem destination"))


class ForwardSpec(Strict):
    """`forward: NAME` or `forward: {to: NAME, mode: queued|sync}`."""

    to: str
    mode: Literal["queued", "sync"] = "queued"

    _check_to = field_validator("to")(_ref("dicom", "DICOM destination"))

    @model_validator(mode="after")
    def _no_sync_stow(self, info: ValidationInfo) -> ForwardSpec:
        if self.mode == "sync" and self.to in _context(info, "stow"):
            raise ValueError(
                f"{self.to!r} is a STOW-RS destination: forward to it with mode: queued "
                "(sync forwarding is DICOM only)"
            )
        return self


class ModifySpec(Strict):
    """Remove `private` or keywords, set keywords to values."""

    remove: list[Literal["private"] | Keyword] = Field(default_factory=list)
    set: dict[Keyword, Text | list[Text]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> ModifySpec:
        if not self.remove and not self.set:
            raise ValueError("modify needs remove or set")
        return self


class StoreAction(Strict):
    store: Annotated[StoreSpec, BeforeValidator(_to)]


class ForwardAction(Strict):
    forward: Annotated[ForwardSpec, BeforeValidator(_to)]


class RejectAction(Strict):
    reject: FailureStatus


class WarnAction(Strict):
    warn: WarningStatus


class ModifyAction(Strict):
    modify: ModifySpec


class DiscardAction(Strict):
    discard: Literal[True] = True


ACTION_KINDS = ("store", "forward", "reject", "warn", "modify", "discard")


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
        hint = sopclass.suggest(key, set(ACTION_KINDS))
        raise ValueError(
            f"unknown action {key!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f" (one of: {', '.join(ACTION_KINDS)})")
        )
    return value


Action = Annotated[
    Annotated[StoreAction, Tag("store")]
    | Annotated[ForwardAction, Tag("forward")]
    | Annotated[RejectAction, Tag("reject")]
    | Annotated[WarnAction, Tag("warn")]
    | Annotated[ModifyAction, Tag("modify")]
    | Annotated[DiscardAction, Tag("discard")],
    Discriminator(
        _action_kind,
        custom_error_type="unknown_action",
        custom_error_message="an action is one of: store, forward, reject, warn, modify, discard",
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

# --- rules and fixtures ----------------------------------------------------------------


class Rule(Strict):
    """A named match and the actions run when it is the first to hold."""

    name: Name
    match: Match = Match()
    actions: Actions


class FixtureInstance(Strict):
    """A made-up C-STORE for a fixture."""

    # The defaults are names too: resolve them to UIDs like written values.
    model_config = ConfigDict(validate_default=True)

    sop_class: str = "CTImageStorage"
    calling_ae: AETitle = "FIXTURE"
    called_ae: AETitle | None = Field(None, description="default: listen.ae_title")
    peer: str = "127.0.0.1"
    transfer_syntax: str = "ExplicitVRLittleEndian"
    tags: dict[Keyword, Text | list[Text]] = Field(default_factory=dict)

    @field_validator("sop_class")
    @classmethod
    def _sop(cls, value: str, info: ValidationInfo) -> str:
        return _sop_classes([value], _context(info, "groups"))[0]

    @field_validator("transfer_syntax")
    @classmethod
    def _ts(cls, value: str) -> str:
        return sopclass.resolve_transfer_syntax(value)


class Expect(Strict):
    """What must happen to a fixture instance; keys left out are not checked."""

    rule: str | None = None
    status: Status | None = None
    forward: list[str] | None = None
    store: list[str] | None = None


class Fixture(Strict):
    """A `tests:` entry: `check` and every reload run it."""

    name: str
    instance: FixtureInstance
    expect: Expect


class Config(Strict):
    """A version-1 rule file."""

    version: Literal[1]
    listen: Listen
    spool: str = Field("spool", description="received instances and queues")
    spool_min_free: ByteSize = Field(2 * 1024**3, description="below it, new instances get 0xA700")
    callers: list[Caller] | None = Field(None, description="when present, only these may associate")
    metrics: Metrics | None = Field(None, description="Prometheus /metrics; off when absent")
    destinations: dict[Name, Destination] = Field(default_factory=dict)
    sop_class_groups: dict[Name, GroupMembers] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    default: Actions
    tests: list[Fixture] = Field(default_factory=list)

    @field_validator("sop_class_groups")
    @classmethod
    def _groups(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: list(_sop_classes(names, {})) for name, names in value.items()}

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
    ctx: dict[str, Any] = {"filesystem": set(), "dicom": set(), "stow": set(), "groups": {}}
    if not isinstance(data, dict):
        return ctx
    dests = data.get("destinations")
    if isinstance(dests, dict):
        for name, body in dests.items():
            kind = _destination_kind(body)
            ctx[kind].add(name)
            if kind == "stow":  # forwarded to like a DICOM node
                ctx["dicom"].add(name)
    groups = data.get("sop_class_groups")
    if isinstance(groups, dict):
        for name, members in groups.items():
            try:
                ctx["groups"][name] = list(_sop_classes(one_or_many(members), {}))
            except (ValueError, TypeError):
                ctx["groups"][name] = []
    return ctx
