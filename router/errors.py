"""The one error tree of dicom-router.

Modules raise these; only `cli.py` turns them into exit codes and one-line messages:
`ConfigError` and `UsageError` exit 1, every other `RouterError` exits 2.
Action failures carry the DIMSE status the sender gets.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


def close_matches(name: str, choices: Iterable[str]) -> list[str]:
    """Up to three of `choices` close to `name`, best first."""
    return difflib.get_close_matches(name, sorted(set(choices)), n=3, cutoff=0.6)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """The did-you-mean tail of every unknown-name message, or "" when nothing is close.

    One format everywhere: `; did you mean 'a'?`, `; did you mean 'a', 'b' or 'c'?`.
    """
    hints = [repr(h) for h in close_matches(name, choices)]
    if not hints:
        return ""
    listed = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
    return f"; did you mean {listed}?"


class UnknownName(RouterError, ValueError):
    """A name the rule file uses that is not among the known ones (a keyword, a key...).

    A ValueError too, so that a Pydantic validator raising it gives a located error.
    """

    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, choices)}")


@dataclass(frozen=True)
class Located:
    """One problem in a rule file, pointing at FILE:LINE:COL (1-based)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(RouterError):
    """The rule file is invalid; `problems` holds every located message."""

    def __init__(self, problems: list[Located]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(RouterError):
    """Bad command-line input (a missing file, an unreadable DICOM file...)."""


class BadRequest(RouterError):
    """A status page form names nothing we know or is malformed (answered 400)."""


class StartupError(RouterError):
    """The daemon could not start (port in use, spool not writable...)."""


class ProtocolError(RouterError):
    """A peer broke the upper layer or DIMSE protocol: the association is aborted."""


class DimseRefused(RouterError):
    """A DIMSE-N request (a storage commitment N-ACTION or N-EVENT-REPORT) answered with
    the failure status `code`; the message is its Error Comment."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code


class ActionError(RouterError):
    """An action failed; `status` is the failure status the sender gets."""

    status: int = 0xC211

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class OutOfResources(ActionError):
    """Disk full, quota, unwritable target: 0xA700, nothing half-written."""

    status = 0xA700


class SOPClassMismatch(ActionError):
    """The dataset's SOP Class UID differs from the C-STORE's: 0xA900."""

    status = 0xA900


class CannotUnderstand(ActionError):
    """A rule needs tags and the dataset cannot be parsed: 0xC210."""

    status = 0xC210


class InvalidStructure(CannotUnderstand):
    """The dataset's structure is broken (lengths, delimiters, tag order): 0xC210."""


class InflateLimit(CannotUnderstand):
    """A deflated dataset inflates past the router's bound (a decompression bomb): 0xC212."""

    status = 0xC212


# --- delivery ---------------------------------------------------------------------------
# Each failure to deliver maps to one of these, once, where it happens (the DICOM Sender,
# the STOW-RS sender); the queue worker decides from the class alone:
#     ForwardError
#     ├── Unreachable        connect refused / timed out, association rejected or aborted
#     │   │                  before it was established, 401/403, 404/405/3xx: the
#     │   │                  destination as a whole backs off; attempts do not move
#     │   ├── AuthFailed     401/403, or the secret cannot be read
#     │   └── Throttled      429, maybe with a Retry-After
#     ├── TransientError     timeout or abort during a transfer, 408/5xx: retried, attempt counted
#     │   └── ServerError    408 or 5xx, maybe with a Retry-After
#     └── PermanentError     no accepted presentation context, a syntax we cannot convert,
#                            413/415/4xx: straight to dead letters


class ForwardError(RouterError):
    """Base of delivery failures; `status` is the destination's answer, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(ForwardError):
    """The destination could not be reached or refused the association."""

    rejected = False


class AuthFailed(Unreachable):
    """401/403, or the secret cannot be read: nothing is sent until that is fixed."""


class Throttled(Unreachable):
    """429: the destination asks us to slow down, maybe saying for how long."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(ForwardError):
    """The transfer broke (timeout, abort); another attempt may succeed.

    `timed_out`: the destination stayed silent for dimse_timeout (rather than the
    association breaking under the C-STORE).
    """

    timed_out = False


class ServerError(TransientError):
    """408 or 5xx: retried, not before a Retry-After the server gave."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ForwardError):
    """This instance cannot be delivered as it is; it goes to the dead letters."""


class TranscodeError(RouterError):
    """The file cannot be decompressed here (no codec, corrupt or unsupported data)."""


class TLSConfigError(RouterError):
    """A certificate, key or CA file of a destination's `tls` cannot be loaded."""
