"""Who may see the pages and act: a bcrypt users file (HTTP basic) and a bearer token
file (scripts), roles, CSRF tokens.

The users file has one `name:role:bcrypt-hash` a line, the token file one
`name:role:sha256-hex-of-token` (`#` comments); role `admin` may POST actions, `read` may
only look. Without either (allowed on loopback only, see `router.config.listen.Metrics`)
everyone is the local admin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("router.web")

ROLES = ("admin", "read")
LOCAL = "local"  # the user name when no users file is configured (loopback only)
_CACHE_SIZE = 64  # verified credentials kept: bcrypt costs ~0.1-0.3 s per check


@dataclass(frozen=True)
class User:
    """A logged-in user."""

    name: str
    role: str
    bearer: bool = False  # logged in by a token a script sent, not by the browser's login

    @property
    def admin(self) -> bool:
        """May POST actions (retry, purge, force)."""
        return self.role == "admin"


def parse_users(text: str, source: str) -> dict[str, tuple[str, bytes]]:
    """name -> (role, bcrypt hash) from a users file; ValueError naming FILE:LINE."""
    return _parse(text, source, "bcrypt-hash", lambda h: h.startswith("$2"))


def parse_tokens(text: str, source: str) -> dict[str, tuple[str, bytes]]:
    """name -> (role, sha256 hex of the token) from a token file; ValueError naming FILE:LINE."""
    return _parse(
        text,
        source,
        "sha256-hex-of-token",
        lambda h: len(h) == 64 and all(c in "0123456789abcdef" for c in h),
    )


def _parse(
    text: str, source: str, what: str, valid: Callable[[str], bool]
) -> dict[str, tuple[str, bytes]]:
    """name -> (role, secret) from `name:role:secret` lines (`#` comments)."""
    out: dict[str, tuple[str, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ROLES or not valid(parts[2]):
            raise ValueError(f"{source}:{number}: expected 'name:admin|read:{what}'")
        out[parts[0]] = (parts[1], parts[2].encode())
    return out


class _Watched:
    """A credentials file, read again when it changes; `changed` tells a cache to forget."""

    def __init__(self, path: Path, parse: Callable[[str, str], dict[str, tuple[str, bytes]]]):
        self.path = path
        self._parse = parse
        self._stamp: tuple[int, int] | None = None
        self.entries: dict[str, tuple[str, bytes]] = {}
        self.reload()  # a missing or malformed file fails the start

    def reload(self) -> bool:
        """Read the file again if it changed; True when it did."""
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self.entries = self._parse(self.path.read_text(), str(self.path))
        self._stamp = stamp
        return True


class Users:
    """Who logs in: basic logins of the users file, bearer tokens of the token file.

    With neither file (loopback only) everyone is the local admin. Verified basic logins
    are cached (bcrypt is slow on purpose); tokens are random, so a sha256 suffices.
    """

    def __init__(self, path: Path | None, tokens: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._users = _Watched(path, parse_users) if path else None
        self._tokens = _Watched(tokens, parse_tokens) if tokens else None
        self._verified: dict[bytes, User] = {}

    @property
    def schemes(self) -> list[str]:
        """The WWW-Authenticate challenges of a 401."""
        realm = 'realm="dicom-router"'
        return [f"Basic {realm}"] * bool(self._users) + [f"Bearer {realm}"] * bool(self._tokens)

    def login(self, authorization: str | None) -> User | None:
        """The user of an Authorization header; None when it is missing or wrong."""
        if self._users is None and self._tokens is None:
            return User(LOCAL, "admin")
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme == "Bearer" and self._tokens is not None:
            return self._bearer(self._tokens, credentials.strip())
        if scheme == "Basic" and self._users is not None:
            return self._basic(self._users, credentials)
        return None

    def _bearer(self, tokens: _Watched, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest().encode()
        with self._lock:
            if not self._fresh(tokens):
                return None
            entries = tokens.entries
        for name, (role, expected) in entries.items():
            if hmac.compare_digest(digest, expected):
                return User(name, role, bearer=True)
        return None

    def _basic(self, users: _Watched, credentials: str) -> User | None:
        try:
            name, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        import bcrypt

        with self._lock:
            if not self._fresh(users):
                return None
            key = hashlib.sha256(credentials.encode()).digest()
            if key in self._verified:
                return self._verified[key]
            role, hashed = users.entries.get(name, ("", b""))
        if not hashed or not bcrypt.checkpw(password.encode(), hashed):
            return None
        user = User(name, role)
        with self._lock:
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.clear()
            self._verified[key] = user
        return user

    def _fresh(self, watched: _Watched) -> bool:
        """Reload `watched` if it changed (under the lock); False when it cannot be read."""
        try:
            if watched.reload():
                self._verified.clear()
        except (OSError, ValueError) as exc:
            log.warning("status page: cannot read %s: %s", watched.path, exc)
            return False
        return True


class Csrf:
    """Tokens for the forms: an HMAC of the user name with this process's secret."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token(self, user: User) -> str:
        """The token the forms of `user` carry."""
        return hmac.new(self._secret, user.name.encode(), hashlib.sha256).hexdigest()

    def valid(self, user: User, token: str | None) -> bool:
        """True when `token` is the one handed to `user`."""
        return token is not None and hmac.compare_digest(self.token(user), token)
