"""Who may see the pages and act: a bcrypt users file, HTTP basic auth, roles, CSRF tokens.

The users file has one `name:role:bcrypt-hash` a line (`#` comments); role `admin` may
POST actions, `read` may only look. Without a users file (allowed on loopback only, see
`router.config.listen.Metrics`) everyone is the local admin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
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

    @property
    def admin(self) -> bool:
        """May POST actions (retry, purge, force)."""
        return self.role == "admin"


def parse_users(text: str, source: str) -> dict[str, tuple[str, bytes]]:
    """name -> (role, bcrypt hash) from a users file; ValueError naming FILE:LINE."""
    users: dict[str, tuple[str, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ROLES or not parts[2].startswith("$2"):
            raise ValueError(f"{source}:{number}: expected 'name:admin|read:bcrypt-hash'")
        users[parts[0]] = (parts[1], parts[2].encode())
    return users


class Users:
    """The users file, read again when it changes; verified logins cached."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, tuple[str, bytes]] = {}
        self._verified: dict[bytes, User] = {}
        if path is not None:
            self._reload()  # a missing or malformed file fails the start

    def _reload(self) -> None:
        assert self.path is not None
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._users = parse_users(self.path.read_text(), str(self.path))
            self._stamp = stamp
            self._verified.clear()

    def login(self, authorization: str | None) -> User | None:
        """The user of an Authorization header; None when it is missing or wrong."""
        if self.path is None:
            return User(LOCAL, "admin")
        if not authorization or not authorization.startswith("Basic "):
            return None
        try:
            name, _, password = (
                base64.b64decode(authorization[6:], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        import bcrypt

        with self._lock:
            try:
                self._reload()
            except (OSError, ValueError) as exc:
                log.warning("status page: cannot read the users file: %s", exc)
                return None
            key = hashlib.sha256(authorization.encode()).digest()
            if key in self._verified:
                return self._verified[key]
            role, hashed = self._users.get(name, ("", b""))
        if not hashed or not bcrypt.checkpw(password.encode(), hashed):
            return None
        user = User(name, role)
        with self._lock:
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.clear()
            self._verified[key] = user
        return user


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
