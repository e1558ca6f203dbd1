"""TLS to DICOM destinations: the client context and the reason a handshake failed.

The context follows DICOM's BCP 195 TLS profiles (PS3.15 B.9-B.11, RFC 9325): TLS 1.2 or
later, and for TLS 1.2 only the AEAD ECDHE/DHE suites with AES-GCM that BCP 195
recommends (OpenSSL names below; TLS 1.3's own suites are all AEAD and stay as they are).
The destination's certificate is verified against `ca_certificates` (default: the
system's CAs) and its name against `server_name` (default: the destination's host),
unless `verify: false`.

pynetdicom catches a failed handshake and only logs it (we silence its logger), so the
context records the error on the socket it made; `Sender` reads it to say why.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.config.destinations import DestinationTLS
from router.config.listen import TLS
from router.errors import StartupError, TLSConfigError

BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


class _RecordingSocket(ssl.SSLSocket):
    """An SSLSocket that leaves the error of a failed connect (handshake) on its context."""

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            if isinstance(self.context, ClientContext):
                self.context.last_error = exc
            raise


class ClientContext(ssl.SSLContext):
    """A client SSLContext whose `last_error` is the last failed handshake's exception."""

    last_error: OSError | None = None


def client_context(tls: DestinationTLS, resolve: Callable[[str], Path]) -> ClientContext:
    """The SSLContext for associations to a destination with `tls`."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.sslsocket_class = _RecordingSocket
    try:
        if tls.ca_certificates:
            ctx.load_verify_locations(resolve(tls.ca_certificates))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.certificate and tls.private_key:
            ctx.load_cert_chain(resolve(tls.certificate), resolve(tls.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"tls: {exc}") from exc
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe(exc: OSError) -> str:
    """A short reason for a failed TLS connect: verification, protocol, or timeout."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "TLS: handshake timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return str(exc.strerror or exc)


def tls_context(tls: TLS, resolve: Callable[[str], Any]) -> ssl.SSLContext:
    """The server's TLS context from the rule file's `listen.tls`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(resolve(tls.certificate), resolve(tls.private_key))
        if tls.ca_certificates:
            ctx.load_verify_locations(resolve(tls.ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"listen.tls: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return ctx
