"""The Authorization header of an HTTP destination (STOW-RS, webhook), its secret read
from a file again whenever the file changes (rotation), or from the environment."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from router.config.http import BasicAuth, BearerAuth, HttpAuth
from router.errors import AuthFailed


class Secret:
    """A secret file's text, read again whenever the file changes (rotation)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""

    def get(self) -> str:
        """The file's text, stripped; AuthFailed when unreadable or empty."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._value = self.path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthFailed(f"cannot read the {self.what} {self.path}: {exc}") from None
        if not self._value:
            raise AuthFailed(f"the {self.what} {self.path} is empty")
        return self._value


class Authorizer:
    """Makes the Authorization header of one destination's requests."""

    def __init__(self, auth: HttpAuth | None, base_dir: Path) -> None:
        self.auth = auth
        self._secret = None
        if isinstance(auth, BearerAuth):
            self._secret = Secret(base_dir / auth.token_file, "token file")
        elif isinstance(auth, BasicAuth) and auth.password_file:
            self._secret = Secret(base_dir / auth.password_file, "password file")

    def header(self) -> str | None:
        """`Bearer ...` or `Basic ...`; None without auth; AuthFailed without a secret."""
        auth = self.auth
        if isinstance(auth, BearerAuth):
            assert self._secret is not None
            return f"Bearer {self._secret.get()}"
        if isinstance(auth, BasicAuth):
            if self._secret is not None:
                password = self._secret.get()
            else:
                password = os.environ.get(auth.password_env or "", "")
                if not password:
                    raise AuthFailed(f"environment variable {auth.password_env} is not set")
            pair = base64.b64encode(f"{auth.username}:{password}".encode()).decode()
            return f"Basic {pair}"
        return None
