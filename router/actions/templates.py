"""Path templates of store destinations: `{Keyword}` fields filled with safe components.

A tag value comes from the sender, so it is sanitised into one harmless path component
(no separator, no control character, never "." or "..", at most 128 bytes), and the
filled path is checked to stay inside the template's root folder whatever the values.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable
from pathlib import Path

from router.errors import ActionError

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_COMPONENT = 128  # bytes; leaves room below NAME_MAX (255) for suffixes


def sanitize(value: str | None) -> str:
    """A tag value made safe as one path component; empty becomes UNKNOWN."""
    text = _UNSAFE.sub("_", value or "").strip()
    if not text.strip("."):
        # "", ".", ".." and friends would name this or a parent folder.
        return "UNKNOWN" if not text else "_" * len(text)
    encoded = text.encode("utf-8")[:_MAX_COMPONENT]
    return encoded.decode("utf-8", errors="ignore")


def template_root(template: str) -> str:
    """The folder a template can never leave: its text before the first field's component."""
    head = template.split("{", 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def template_fields(template: str) -> list[str]:
    """The DICOM keywords a template uses."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class Template:
    """A path template parsed once (per config version): `{Keyword}` fields, sanitised."""

    def __init__(self, root: Path, template: str) -> None:
        self._parts = [(lit, field) for lit, field, _, _ in string.Formatter().parse(template)]
        self._skip = len(template_root(template))
        # normpath, not resolve(): no filesystem calls, and sanitised values hold no "/" or ".."
        self.base = os.path.normpath(os.path.join(root, template_root(template)))

    def render(self, lookup: Callable[[str], str | None]) -> str:
        """The template's text with each field filled with its sanitised value."""
        return "".join(lit + (sanitize(lookup(f)) if f else "") for lit, f in self._parts)

    def target(self, lookup: Callable[[str], str | None]) -> Path:
        """Where an instance goes; guaranteed to stay inside the template's root folder."""
        rel = self.render(lookup)[self._skip :].lstrip("/")
        target = os.path.normpath(os.path.join(self.base, rel))
        if os.path.commonpath([self.base, target]) != self.base:
            raise ActionError(f"path {target} would leave {self.base}")
        return Path(target)
