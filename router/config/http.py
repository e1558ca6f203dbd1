"""HTTP for STOW-RS destinations: the DICOMweb root URL, extra headers, and auth whose
secrets stay out of the rule file (files read again when they change, or the environment)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from router.config.base import Strict

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_OURS = {"authorization", "content-type", "content-length", "transfer-encoding", "accept", "host"}


def url(value: str) -> str:
    """A DICOMweb root, without a trailing slash."""
    m = re.fullmatch(r"(https?)://([^/?#\s]+)(/[^?#\s]*)?", value.strip())
    if not m:
        raise ValueError(
            f"{value!r} is not a DICOMweb root: write http(s)://host[:port]/path, "
            "e.g. https://pacs.example.org/dicom-web"
        )
    return value.strip().rstrip("/")


def headers(value: dict[str, str]) -> dict[str, str]:
    """Extra headers: valid names, none the router sets itself."""
    for name in value:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if name.lower() in _OURS:
            raise ValueError(f"the router sets the {name} header itself (auth: for credentials)")
    return value


def cleartext(url: str) -> bool:
    """An http:// URL to anything but this machine."""
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return url.startswith("http:") and host not in ("localhost", "127.0.0.1", "::1")


class BasicAuth(Strict):
    """HTTP basic auth; the password is read from a file or an environment variable."""

    type: Literal["basic"] = Field(description="basic: a user name and a password")
    username: str = Field(min_length=1, description="the user name")
    password_file: str | None = Field(
        None, description="file holding the password, relative to the rule file's folder"
    )
    password_env: str | None = Field(
        None, description="environment variable of the daemon holding the password"
    )

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

    type: Literal["bearer"] = Field(description="bearer: a token")
    token_file: str = Field(
        description="file holding the token, relative to the rule file's folder"
    )

    def describe(self) -> str:
        """In words, without the token."""
        return f"bearer token from file {self.token_file}"


HttpAuth = Annotated[BasicAuth | BearerAuth, Field(discriminator="type")]


def secret_files(auth: HttpAuth | None, at: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(key path, file) of an auth's secret file, if it has one."""
    if isinstance(auth, BearerAuth):
        return [((*at, "token_file"), auth.token_file)]
    if isinstance(auth, BasicAuth) and auth.password_file:
        return [((*at, "password_file"), auth.password_file)]
    return []
