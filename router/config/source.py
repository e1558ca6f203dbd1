"""A rule file's YAML text with source marks: every problem points at FILE:LINE:COL.

PyYAML keeps line numbers only on nodes, so the text is composed once into a node tree
and constructed from it; a Pydantic error's `loc` is walked back through the nodes to the
line and column that caused it. `scan` finds what PyYAML would silently get wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from router.dicom.status import hex_code
from router.errors import ConfigError, Located

_INT_TAG = "tag:yaml.org,2002:int"
_STATUS_KEYS = ("reject", "warn", "status")


@dataclass(frozen=True)
class Source:
    """A parsed rule file: its name (for messages), the node tree and the plain data."""

    name: str
    root: yaml.Node
    data: dict[str, Any]

    def at(self, loc: list[Any], message: str, *, point_at_key: bool = False) -> Located:
        """`message` located at the node a Pydantic-style `loc` leads to."""
        node, _ = _walk(self.root, loc, point_at_key=point_at_key)
        return _mark(self.name, node, message)

    def locate(self, exc: ValidationError) -> list[Located]:
        """One located problem per Pydantic error, as `key.path: message`, in file order."""
        problems = []
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            if err["type"] == "unknown_key":
                loc.append(err["ctx"]["key"])
            node, path = _walk(self.root, loc, point_at_key=err["type"] == "unknown_key")
            problems.append(_mark(self.name, node, f"{key_path(path)}: {_message(err)}"))
        return sorted(set(problems), key=lambda p: (p.line, p.column))

    def scan(self) -> list[Located]:
        """Duplicate keys, octal numbers, decimal status codes: valid YAML, wrong meaning."""
        return _scan(self.name, self.root, [])


def key_path(parts: Sequence[Any]) -> str:
    """A key path as messages show it; list items count from 1, as `check` numbers rules."""
    shown = (str(p + 1) if type(p) is int else str(p) for p in parts)  # not a bool key
    return ".".join(shown) or "(top)"


def parse(name: str, text: str) -> Source:
    """Compose and construct the YAML text; raise ConfigError when it is not a mapping."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([Located(name, line, col, message)]) from None
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        raise ConfigError([Located(name, 1, 1, "the rule file must be a mapping with version: 1")])
    return Source(name, root, data)


def _scan(name: str, node: yaml.Node, path: list[str]) -> list[Located]:
    out: list[Located] = []
    here = ".".join(path) or "(top)"
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            label = str(key.value)
            if label in seen:
                out.append(
                    _mark(
                        name,
                        key,
                        f"{here}.{label}: duplicate key {label!r} (first at line {seen[label]})",
                    )
                )
            seen.setdefault(label, key.start_mark.line + 1)
            out += _scan(name, key, [*path, label]) if path[-1:] == ["on_status"] else []
            out += _scan(name, value, [*path, label])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _scan(name, item, [*path, str(i + 1)])  # counted from 1, as key_path does
    elif isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG:
        text = node.value.lstrip("+-")
        if re.fullmatch(r"0[0-7_]+", text):
            out.append(
                _mark(
                    name,
                    node,
                    (
                        f"{here}: YAML reads {node.value} as the octal number "
                        f"{int(text.replace('_', ''), 8)}:"
                        f" write 0x{text.lstrip('0').zfill(4)} for a status code, or drop the"
                        " leading zero for a number"
                    ),
                )
            )
        elif ((path[-1:] and path[-1] in _STATUS_KEYS) or path[-2:-1] == ["on_status"]) and not (
            text.lower().startswith("0x")
        ):
            code = int(text.replace("_", ""))
            out.append(
                _mark(name, node, f"{here}: write status codes in hex, e.g. {hex_code(code)}")
            )
    return out


def _mark(name: str, node: yaml.Node, message: str) -> Located:
    return Located(name, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _walk(node: yaml.Node, loc: list[Any], *, point_at_key: bool) -> tuple[yaml.Node, list[Any]]:
    """Follow a Pydantic `loc` through the YAML nodes; union tags are skipped."""
    path: list[Any] = []
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        last = i == len(loc) - 1
        want_key = (last and point_at_key) or loc[i + 1 : i + 2] == ["[key]"]
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if hit is None:
                continue  # a union tag, or a key that is missing: stay on the parent
            path.append(part)
            node = hit[0] if want_key else hit[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            path.append(part)
            node = node.value[part]
    return node, path


def _message(err: Any) -> str:
    kind, msg, ctx = err["type"], str(err["msg"]), err.get("ctx") or {}
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        msg = f"missing required key {err['loc'][-1]!r}"
    elif kind == "extra_forbidden":
        msg = f"unknown key {err['loc'][-1]!r}"
    elif kind == "literal_error":
        msg = f"expected {ctx.get('expected', msg)}, got {err['input']!r}"
    value = err.get("input")
    shown = isinstance(value, int | float | str) and not isinstance(value, bool)
    if (
        shown
        and kind not in ("missing", "unknown_key")
        and str(value) not in msg
        and "0x" not in msg
    ):
        msg += f" (got {value!r})"
    return msg
