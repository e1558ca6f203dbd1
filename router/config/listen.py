"""The receiving side of the rule file: `listen` (and its TLS), `callers`, `metrics`."""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, IPvAnyNetwork, model_validator

from router.config.base import Strict
from router.config.fields import AEPattern, AETitle, Seconds


class TLS(Strict):
    """TLS for the listener; relative paths resolve against the rule file's folder."""

    certificate: str = Field(description="the server certificate (PEM, may include the chain)")
    private_key: str = Field(description="its private key (PEM, unencrypted)")
    ca_certificates: str | None = Field(
        None, description="CAs that sign client certificates; default: the system's CAs"
    )
    require_client_certificate: bool = Field(
        True,
        description="true: a client without a valid certificate is refused during the "
        "handshake; false: no client certificate is asked for",
    )


class ProxyProtocol(Strict):
    """The PROXY protocol (v1 or v2) from TCP load balancers such as HAProxy."""

    trusted: list[IPvAnyNetwork] = Field(
        min_length=1,
        description="IPs or CIDRs of the balancers: only they may send a PROXY header, and "
        "from them it is required; the client address it carries is the one `callers`, "
        "logs, metrics and trace use",
    )


class Listen(Strict):
    """Where and as whom the router accepts associations (changes apply on restart)."""

    ae_title: AETitle = Field(description="the router's AE title (1-16 characters)")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(11112, ge=1, le=65535, description="TCP port to listen on")
    max_associations: int = Field(
        32, ge=1, le=1000, description="concurrent associations, in total over all workers"
    )
    max_pdu: int = Field(
        262144,
        ge=0,
        description="the maximum PDU length (bytes) we advertise and enforce; 0 = unlimited",
    )
    network_timeout: Seconds = Field(
        60.0,
        gt=0,
        description="a duration: a sender silent this long (idle or mid-transfer) is dropped",
    )
    tls: TLS | None = Field(None, description="TLS for the listener; plain TCP when absent")
    proxy_protocol: ProxyProtocol | None = Field(
        None,
        description="accept PROXY protocol headers (v1, v2) from these balancers; "
        "absent: none is accepted from anyone",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="receiving processes on the port; default: the CPUs, at most 8; 1: one process",
    )


class Caller(Strict):
    """One sender allowed to associate: AE title or glob, optionally from given hosts only."""

    ae_title: AEPattern = Field(description="an AE title or a glob such as 'MR_*', case-sensitive")
    hosts: list[IPvAnyNetwork] | None = Field(
        None, description="IPs or CIDRs the AE title may call from; default: any address"
    )
    commitment_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="where this caller takes Storage Commitment reports on a new association; "
        "only callers with one may ask for storage commitment",
    )


class Metrics(Strict):
    """The HTTP endpoint: /metrics, /healthz, /readyz and the status pages on one port."""

    host: str = Field("127.0.0.1", description="address to serve on; loopback by default")
    port: int = Field(9110, ge=1, le=65535, description="TCP port to serve on")
    pages: bool | None = Field(
        None,
        description="serve the status pages (/, /destinations, /dead-letters, /decisions, "
        "/trace, /studies); default: on when host is loopback or users_file or token_file "
        "is set, else off (a rule file written before the pages keeps working); false: only "
        "/metrics, /healthz and /readyz",
    )
    users_file: str | None = Field(
        None,
        description="who may see the status pages: one 'name:role:bcrypt-hash' a line, role "
        "'admin' (may retry, purge, force) or 'read'; relative to the rule file's folder. "
        "Required (or token_file) when the pages are on and host is not loopback",
    )
    token_file: str | None = Field(
        None,
        description="bearer tokens for scripts: one 'name:role:sha256-hex-of-token' a line, "
        "role 'admin' or 'read'; a request sends 'Authorization: Bearer TOKEN' and needs no "
        "CSRF token; relative to the rule file's folder. With users_file, either login works",
    )

    @model_validator(mode="after")
    def _pages_need_users_off_loopback(self) -> Self:
        """The pages show patient data (trace): anything but loopback needs a login."""
        if self.pages and not self.logins and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host} is not loopback, so the status pages need "
                "users_file or token_file (or pages: false)"
            )
        return self

    @property
    def pages_on(self) -> bool:
        """Whether the pages are served: as set, else on loopback or with a login file."""
        if self.pages is not None:
            return self.pages
        return self.logins or is_loopback(self.host)

    @property
    def logins(self) -> bool:
        """Whether the pages ask for a login (users_file or token_file set)."""
        return self.users_file is not None or self.token_file is not None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
