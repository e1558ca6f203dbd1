"""The receiving side of the rule file: `listen` (and its TLS), `callers`, `metrics`."""

from __future__ import annotations

from pydantic import Field, IPvAnyNetwork

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
    """The Prometheus endpoint: /metrics, /healthz and /readyz on one port."""

    host: str = Field("127.0.0.1", description="address to serve on; loopback by default")
    port: int = Field(9110, ge=1, le=65535, description="TCP port to serve on")
