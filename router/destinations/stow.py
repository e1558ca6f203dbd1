"""Sending spooled instances to a DICOMweb STOW-RS service (PS3.18 §10.5) with httpx.

One request carries a batch: `multipart/related; type="application/dicom"`, each part a
spooled file's bytes as they are, streamed in 1 MiB reads behind an exact Content-Length
(so no chunked upload, which some servers refuse). The outcome of each instance comes
from the response body, never from the HTTP code alone: Orthanc's DICOMweb plugin 1.7
answers 200 with failures listed, and 400 or 409 when part of the batch was stored.

Errors map onto router.errors' ForwardError tree:
    Unreachable     connection refused / timed out, TLS failure, 401/403 (AuthFailed),
                    429 (Throttled, Retry-After), 404/405/3xx (the url is wrong): the
                    destination backs off as a whole, attempts not counted
    TransientError  transfer broken mid-way, 408, 5xx (with Retry-After honoured), an
                    instance the answer does not mention: retried, attempt counted
    PermanentError  413, 415, other 4xx; an instance a 400 answer leaves out (the server
                    could not read it): dead letter
Listed failures carry their FailureReason (0008,1197), which goes through `on_status`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from router.config.destinations import StowDestination
from router.destinations.dicom import Sent
from router.destinations.httpauth import Authorizer
from router.dicom.status import PROCESSING_FAILURE  # a failed item without a FailureReason
from router.errors import (
    AuthFailed,
    ForwardError,
    PermanentError,
    ServerError,
    Throttled,
    TransientError,
    Unreachable,
)

log = logging.getLogger("router.forward")
# httpx logs every request at INFO; the router logs each delivery itself.
logging.getLogger("httpx").setLevel(logging.WARNING)

READ = 1024 * 1024  # bytes per read of a spooled file: the only buffer per part
MAX_ANSWER = 16 * 1024 * 1024  # a response body larger than this is not read
MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond this is capped

REFERENCED, FAILED = "00081199", "00081198"
INSTANCE_UID, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"


@dataclass(frozen=True)
class Part:
    """One spooled instance of a batch."""

    path: Path
    sop_instance_uid: str


Result = Sent | ForwardError


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return value if isinstance(value, list) else []


def parse_answer(body: bytes) -> tuple[dict[str, Sent], bool] | None:
    """Per-instance answers of a STOW-RS JSON response, and whether it listed anything.

    None when the body is not a DICOM JSON object. A referenced instance answers its
    WarningReason (or 0x0000), a failed one its FailureReason (or 0x0110).
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]  # some servers wrap the one dataset in an array
    if not isinstance(doc, dict):
        return None
    out: dict[str, Sent] = {}
    for item in _values(doc, REFERENCED):
        if isinstance(item, dict) and (uids := _values(item, INSTANCE_UID)):
            warning = _values(item, WARNING_REASON)
            code = int(warning[0]) if warning and isinstance(warning[0], int) else 0
            out[str(uids[0])] = Sent(code, f"STOW-RS WarningReason 0x{code:04X}" if code else None)
    for item in _values(doc, FAILED):
        if isinstance(item, dict) and (uids := _values(item, INSTANCE_UID)):
            reason = _values(item, FAILURE_REASON)
            code = int(reason[0]) if reason and isinstance(reason[0], int) else PROCESSING_FAILURE
            out[str(uids[0])] = Sent(code, f"STOW-RS FailureReason 0x{code:04X}")
    return out, REFERENCED in doc or FAILED in doc


class StowSender:
    """POSTs batches to one STOW-RS destination over a kept-alive httpx connection."""

    def __init__(self, name: str, dest: StowDestination, base_dir: Path) -> None:
        self.name = name
        self.dest = dest
        self.endpoint = f"{dest.url}/studies"
        self.last_used = 0.0
        self._auth = Authorizer(dest.auth, base_dir)
        self._ca = base_dir / dest.ca_certificates if dest.ca_certificates else None
        self._http: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """The httpx client, made at first use (a bad CA file is then a send error)."""
        if self._http is None:
            self._http = self._client()
        return self._http

    def _client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = self.dest.verify_tls
        if self.dest.verify_tls and self._ca is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self._ca))
            except (OSError, ssl.SSLError) as exc:
                raise Unreachable(f"cannot use ca_certificates {self._ca}: {exc}") from None
        return httpx.Client(
            verify=verify,
            proxy=self.dest.proxy,
            trust_env=False,  # no proxy or CA bundle from the environment: the rule file says
            timeout=httpx.Timeout(self.dest.timeout, connect=self.dest.connect_timeout),
            limits=httpx.Limits(max_connections=1, keepalive_expiry=self.dest.idle_timeout),
            follow_redirects=False,  # a streamed body cannot be sent twice
        )

    def send(self, parts: list[Part]) -> list[Result]:
        """POST one batch; per part, the destination's answer or why it has none.

        Raises Unreachable or TransientError when the whole batch failed alike.
        """
        boundary = uuid.uuid4().hex
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"--{boundary}--\r\n".encode()
        try:
            sizes = [p.path.stat().st_size for p in parts]
        except OSError as exc:
            raise TransientError(f"cannot read a spooled file: {exc}") from exc
        length = sum(sizes) + len(parts) * (len(head) + 2) + len(tail)
        headers = {
            **self.dest.headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
        }
        if (authorization := self._auth.header()) is not None:
            headers["Authorization"] = authorization
        started = time.monotonic()
        client = self.client
        try:
            request = client.build_request(
                "POST", self.endpoint, headers=headers, content=_body(parts, sizes, head, tail)
            )
            response = client.send(request, stream=True)
            try:
                body = _read_bounded(response)
            finally:
                response.close()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            raise Unreachable(f"cannot connect to {self.endpoint}: {exc}") from exc
        except (httpx.HTTPError, OSError) as exc:  # httpx drops the broken connection itself
            raise TransientError(f"STOW-RS to {self.endpoint} broke: {exc!r}") from exc
        finally:
            self.last_used = time.monotonic()
        log.debug(
            "STOW-RS POST %s: HTTP %d, %d instances, %d bytes in %.2f s",
            self.endpoint,
            response.status_code,
            len(parts),
            length,
            time.monotonic() - started,
        )
        return self._results(response, body, parts)

    def _results(self, response: httpx.Response, body: bytes, parts: list[Part]) -> list[Result]:
        code = response.status_code
        what = f"HTTP {code} {response.reason_phrase}".strip()
        if code in (401, 403):
            problem = (
                "the destination refused our credentials"
                if code == 401
                else "the credentials are not allowed to store"
            )
            how = self.dest.auth.describe() if self.dest.auth else "no auth configured"
            raise AuthFailed(f"{what}: {problem} ({how})")
        if code == 429:
            raise Throttled(what, _retry_after(response))
        if code == 408 or code >= 500:
            raise ServerError(what, _retry_after(response))
        if code in (404, 405) or 300 <= code < 400 or code < 200:
            where = response.headers.get("location")
            raise Unreachable(
                f"{what} from {self.endpoint}"
                + (f" (redirect to {where})" if where else ": is url the DICOMweb root?")
            )
        if code not in (200, 202, 400, 409):
            hint = {413: ": lower batch.max_bytes?", 415: ": it takes no application/dicom"}
            raise PermanentError(what + hint.get(code, ""))
        parsed = parse_answer(body)
        answers, listed = parsed if parsed is not None else ({}, False)
        results: list[Result] = []
        for part in parts:
            sent = answers.get(part.sop_instance_uid)
            if sent is not None:
                results.append(sent)
            elif code == 200 and not listed:
                results.append(Sent(0, None))  # 200 without details: all stored (§10.5.3)
            elif code == 400 and listed:
                results.append(PermanentError(f"{what}: left out of the answer (unreadable?)"))
            else:
                results.append(TransientError(f"{what}: not in the answer"))
        return results

    def close_if_idle(self) -> None:
        """Close the kept-alive connection after idle_timeout without work.

        httpx only notices an expired connection at the next request: until then the
        socket would stay open.
        """
        if self.last_used and time.monotonic() - self.last_used > self.dest.idle_timeout:
            self.close()
            self.last_used = 0.0

    def close(self) -> None:
        """Close the connection and the client (a new one is made when needed)."""
        if self._http is not None:
            self._http.close()
            self._http = None


def _body(parts: list[Part], sizes: list[int], head: bytes, tail: bytes) -> Iterator[bytes]:
    """The multipart body, read from the spooled files as it is sent.

    The small pieces (part headers, CRLFs, the closing boundary) ride on the file chunks
    next to them: sent on their own they would be tiny writes, which Nagle's algorithm and
    delayed ACKs can hold for 40 ms each.
    """
    carry = b""
    for i, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        carry += head
        left = size
        with part.path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(READ, left))
                if not chunk:
                    raise OSError(f"{part.path} shrank while it was sent")
                left -= len(chunk)
                end = b"\r\n" + (tail if i == len(parts) - 1 else b"") if left == 0 else b""
                yield carry + chunk + end if carry or end else chunk
                carry = b""
        if size == 0:
            carry += b"\r\n" + (tail if i == len(parts) - 1 else b"")
    if carry:
        yield carry


def _read_bounded(response: httpx.Response) -> bytes:
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) > MAX_ANSWER:
            break  # a huge answer is not a STOW-RS answer: judged as unparsable
    return bytes(out) if len(out) <= MAX_ANSWER else b""
