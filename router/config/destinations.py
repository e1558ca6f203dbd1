"""Where instances go: DICOM nodes, DICOMweb STOW-RS services and folders.

DICOM nodes and STOW-RS services are both delivered to from queues, with retries and an
`on_status` policy: they share `QueuedDestination`, whose `parallel` says how many
deliveries run at once whatever the kind. Every destination lists what `check` warns
about in it (`cautions`), so callers need not switch on its type.
"""

from __future__ import annotations

import re
import string
from abc import abstractmethod
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from router.config import http
from router.config.base import Strict
from router.config.fields import AETitle, ByteSize, Seconds, keyword

Policy = Literal["delivered", "retry", "dead_letter"]
OnExists = Literal["overwrite", "keep", "rename"]
Caution = tuple[tuple[str, ...], str]  # (key path inside the destination, message)

# --- retries and status policy ---------------------------------------------------------

MAX_ATTEMPTS = 1000
MAX_DELAY = 86400.0  # a day: a destination down longer is still tried daily


def _seconds(value: float) -> str:
    return f"{value:g} s"


class Retry(Strict):
    """Exponential backoff with jitter between delivery attempts."""

    max_attempts: int = Field(
        10,
        description=f"counted attempts before a queued delivery becomes a dead letter "
        f"(1-{MAX_ATTEMPTS})",
        json_schema_extra={"minimum": 1, "maximum": MAX_ATTEMPTS},
    )
    initial_delay: Seconds = Field(
        2.0,
        description="a duration: the first retry delay; it doubles each attempt, up to max_delay",
    )
    max_delay: Seconds = Field(
        300.0,
        description="a duration, at most 1d: the cap on a retry delay, also the longest pause "
        "while the destination is unreachable",
        json_schema_extra={"maximum": MAX_DELAY},
    )

    @field_validator("max_attempts")
    @classmethod
    def _attempts(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_attempts is {value}: write at least 1 (one try, no retry)")
        if value > MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts is {value}, more than {MAX_ATTEMPTS}: write at most "
                f"{MAX_ATTEMPTS} (an unreachable destination counts no attempts, so "
                "nothing is lost while it is down)"
            )
        return value

    @field_validator("max_delay")
    @classmethod
    def _max_delay(cls, value: float) -> float:
        if value > MAX_DELAY:
            raise ValueError(
                f"max_delay is {_seconds(value)}, more than a day: write at most 1d, so that "
                "a destination back up is tried again within a day"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        # A rule file that lowers only max_delay (below the 2 s default) loaded before these
        # bounds existed: the default first delay follows it instead of refusing the file.
        if "initial_delay" not in self.model_fields_set and self.initial_delay > self.max_delay:
            object.__setattr__(self, "initial_delay", self.max_delay)  # frozen: set once, here
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"initial_delay ({_seconds(self.initial_delay)}) is longer than max_delay "
                f"({_seconds(self.max_delay)}): lower initial_delay or raise max_delay"
            )
        return self


_RANGE = re.compile(r"^0x([0-9A-Fa-f]{4})(?:-0x([0-9A-Fa-f]{4}))?$")


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


# --- the bases -------------------------------------------------------------------------


# Storage Commitment is a DICOM service: only a DICOM node can be asked for its own.
_COMMITMENT_DICOM_ONLY = {
    "commitment": "commitment: true is for DICOM destinations (ae_title, host, port) only: "
    "a STOW-RS service, webhook or folder cannot be asked for Storage Commitment"
}


class BaseDestination(Strict):
    """What every destination answers, whatever its kind."""

    def cautions(self) -> list[Caution]:
        """What `check` warns about in this destination, without refusing it."""
        return []

    def secret_files(self) -> list[tuple[tuple[str, ...], str]]:
        """(key path, file) of the secrets it reads, relative to the rule file's folder."""
        return []


class QueuedDestination(BaseDestination):
    """A destination delivered to from a queue: a DICOM node or a STOW-RS service."""

    retry: Retry = Field(Retry(), description="counted attempts and the backoff between them")
    on_status: dict[StatusKey, Policy] = Field(
        default_factory=dict,
        description="what an answer means for a queued delivery: warning / failure / 0xCODE "
        "/ 0xLOW-0xHIGH -> delivered|retry|dead_letter",
    )
    idle_timeout: Seconds = Field(
        10.0, description="a duration: close an association or connection after this long idle"
    )
    connect_timeout: Seconds = Field(
        10.0, description="a duration: TCP (and TLS) connect, and DICOM association negotiation"
    )

    @property
    @abstractmethod
    def parallel(self) -> int:
        """How many deliveries to this destination run at once."""


# --- DICOM nodes -----------------------------------------------------------------------


class DestinationTLS(Strict):
    """TLS to a DICOM destination; relative paths resolve against the rule file's folder."""

    ca_certificates: str | None = Field(
        None,
        description="PEM file of the CAs that sign the destination's certificate"
        "; default: the system's CAs",
    )
    certificate: str | None = Field(None, description="our client certificate (PEM), if asked")
    private_key: str | None = Field(None, description="the client certificate's key (PEM)")
    server_name: str | None = Field(
        None, description="name the destination's certificate must carry; default: host"
    )
    verify: bool = Field(
        True, description="true: check the certificate; false: accept any (`check` warns)"
    )

    @model_validator(mode="after")
    def _key_with_certificate(self) -> DestinationTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("write both certificate and private_key, or neither")
        return self


class DicomDestination(QueuedDestination):
    """A DICOM node (PACS, AI node...) that receives C-STOREs from the router."""

    ae_title: AETitle = Field(description="the destination's (called) AE title")
    host: str = Field(description="host name or IP address")
    port: int = Field(ge=1, le=65535, description="TCP port")
    calling_ae_title: AETitle | None = Field(
        None, description="the AE title we call it with; default: listen.ae_title"
    )
    associations: int = Field(
        1,
        ge=1,
        le=16,
        description="parallel associations for queued forwards; idle ones kept for sync forwards",
    )
    dimse_timeout: Seconds = Field(
        60.0, description="a duration: how long to wait for the destination's C-STORE response"
    )
    max_pdu: int = Field(
        262144, ge=0, description="the maximum PDU length (bytes) we receive from it; 0 = unlimited"
    )
    tls: DestinationTLS | None = Field(None, description="TLS 1.2+ (BCP 195) to the destination")
    commitment: bool = Field(
        False,
        description="with storage_commitment answer: relayed, ask this destination for its own "
        "Storage Commitment (N-ACTION) of what it was sent, and commit to the modality only "
        "what it committed; its report is accepted on the N-ACTION's association or on a new "
        "one it opens to the router's listener",
    )

    @property
    def parallel(self) -> int:
        """Parallel associations."""
        return self.associations

    def cautions(self) -> list[Caution]:
        """An unverified TLS certificate."""
        if self.tls and not self.tls.verify:
            return [
                (
                    ("tls", "verify"),
                    "false: the destination's certificate is not checked, anyone in the path "
                    "can read and change what is sent",
                )
            ]
        return []


# --- DICOMweb STOW-RS services ---------------------------------------------------------


class StowBatch(Strict):
    """How many instances one STOW-RS request carries; a larger instance goes alone."""

    max_instances: int = Field(16, ge=1, le=1000, description="instances per request")
    max_bytes: ByteSize = Field(
        64 * 1024**2,
        ge=1,
        description="file bytes per request (a size); a larger instance goes alone",
    )


class StowDestination(QueuedDestination):
    """A DICOMweb STOW-RS service: instances are POSTed to `{url}/studies`."""

    refused_keys = _COMMITMENT_DICOM_ONLY

    url: Annotated[str, AfterValidator(http.url)] = Field(
        description="the DICOMweb root, e.g. http://pacs:8042/dicom-web"
    )
    auth: http.HttpAuth | None = Field(None, description="basic or bearer auth; none when absent")
    headers: Annotated[dict[str, str], AfterValidator(http.headers)] = Field(
        default_factory=dict, description="extra HTTP headers sent with every request"
    )
    verify_tls: bool = Field(
        True, description="check an https server's certificate and name; false only for tests"
    )
    ca_certificates: str | None = Field(None, description="CA bundle (PEM) to check it against")
    proxy: str | None = Field(None, description="HTTP(S) proxy URL; the environment's is not used")
    batch: StowBatch = Field(StowBatch(), description="how much one request carries")
    connections: int = Field(1, ge=1, le=16, description="parallel requests")
    timeout: Seconds = Field(
        120.0,
        gt=0,
        description="a duration: the longest silence while sending or waiting for the answer",
    )

    @property
    def parallel(self) -> int:
        """Parallel requests."""
        return self.connections

    def describe(self) -> str:
        """Endpoint, auth, TLS, extra header names and batch limits; never a secret."""
        parts = [self.auth.describe() if self.auth else "no auth"]
        if self.url.startswith("https:"):
            parts.append("TLS verified" if self.verify_tls else "TLS NOT verified")
        if self.headers:
            parts.append(f"headers {', '.join(self.headers)}")
        parts.append(f"batches of {self.batch.max_instances} / {self.batch.max_bytes} bytes")
        return f"STOW-RS {self.url}/studies ({'; '.join(parts)})"

    def secret_files(self) -> list[tuple[tuple[str, ...], str]]:
        """Its auth's token or password file."""
        return http.secret_files(self.auth, ("auth",))

    def cautions(self) -> list[Caution]:
        """A secret sent over plain http to another machine."""
        if self.auth and http.cleartext(self.url):
            return [
                (
                    ("url",),
                    f"{self.auth.type} auth over plain http sends the secret unencrypted: "
                    "use https",
                )
            ]
        return []


# --- folders ---------------------------------------------------------------------------


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


class FilesystemDestination(BaseDestination):
    """A folder; `path` is a template of DICOM keywords below it."""

    refused_keys = _COMMITMENT_DICOM_ONLY

    path: Annotated[str, AfterValidator(_template)] = Field(
        description="e.g. archive/{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"
    )
    on_exists: OnExists = Field(
        "overwrite", description="when the file exists: overwrite, keep it, or rename the new one"
    )

    def cautions(self) -> list[Caution]:
        """A template without a field: every instance goes to the same file."""
        if "{" not in self.path:
            return [
                (("path",), "no {Keyword} in the template: every instance goes to the same file")
            ]
        return []


class WebhookSpec(Strict):
    """Where a webhook POSTs its JSON, and how it authenticates."""

    url: Annotated[str, AfterValidator(http.url)] = Field(
        description="the URL each completed series or study is POSTed to"
    )
    auth: http.HttpAuth | None = Field(
        None, description="basic or bearer auth, the secret read from a file; none when absent"
    )
    headers: Annotated[dict[str, str], AfterValidator(http.headers)] = Field(
        default_factory=dict, description="extra HTTP headers sent with every request"
    )
    ca_certificates: str | None = Field(
        None, description="CA bundle (PEM) to check an https server against; default: system CAs"
    )
    timeout: Seconds = Field(30.0, gt=0, description="a duration: the longest wait for the answer")


class WebhookDestination(QueuedDestination):
    """An HTTP endpoint told, by one JSON POST, that a series or study is complete."""

    refused_keys = _COMMITMENT_DICOM_ONLY

    webhook: WebhookSpec = Field(description="{url: ..., auth: {type: bearer, token_file: ...}}")

    @property
    def parallel(self) -> int:
        """One request at a time."""
        return 1

    def describe(self) -> str:
        """Endpoint and auth; never a secret."""
        auth = self.webhook.auth.describe() if self.webhook.auth else "no auth"
        tls = "; TLS verified" if self.webhook.url.startswith("https:") else ""
        return f"webhook POST {self.webhook.url} ({auth}{tls})"

    def secret_files(self) -> list[tuple[tuple[str, ...], str]]:
        """Its auth's token or password file."""
        return http.secret_files(self.webhook.auth, ("webhook", "auth"))

    def cautions(self) -> list[Caution]:
        """A secret sent over plain http to another machine."""
        if self.webhook.auth and http.cleartext(self.webhook.url):
            return [(("webhook", "url"), "auth over plain http sends the secret unencrypted")]
        return []


def destination_kind(value: Any) -> str:
    """dicom, stow, webhook or filesystem, for raw data (by its keys) or a model."""
    if (isinstance(value, dict) and "webhook" in value) or isinstance(value, WebhookDestination):
        return "webhook"
    if (isinstance(value, dict) and "url" in value) or isinstance(value, StowDestination):
        return "stow"
    if (isinstance(value, dict) and "path" in value) or isinstance(value, FilesystemDestination):
        return "filesystem"
    return "dicom"


Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")]
    | Annotated[FilesystemDestination, Tag("filesystem")]
    | Annotated[StowDestination, Tag("stow")]
    | Annotated[WebhookDestination, Tag("webhook")],
    Discriminator(destination_kind),
]
