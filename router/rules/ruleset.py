"""Reading a rule file: YAML with source marks, validation, FILE:LINE:COL errors.

PyYAML keeps line numbers only on nodes, so the file is composed once into a node tree,
constructed from it, validated, and each Pydantic error's `loc` is walked back through
the nodes to the line and column that caused it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.config.model import (
    Config,
    DicomDestination,
    FilesystemDestination,
    StowDestination,
    validation_context,
)
from router.dicom import sopclass
from router.errors import ConfigError, Located
from router.rules import lint
from router.rules.fixtures import FixtureResult, describe, run_all

_INT_TAG = "tag:yaml.org,2002:int"
_STATUS_KEYS = ("reject", "warn", "status")


def _scan(name: str, node: yaml.Node, path: list[str]) -> list[Located]:
    """What PyYAML would silently get wrong: duplicate keys, octal numbers, decimal statuses."""
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
            out += _scan(name, item, [*path, str(i)])
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
            out.append(
                _mark(
                    name,
                    node,
                    (f"{here}: write status codes in hex, e.g. 0x{int(text.replace('_', '')):04X}"),
                )
            )
    return out


def _mark(name: str, node: yaml.Node, message: str) -> Located:
    return Located(name, node.start_mark.line + 1, node.start_mark.column + 1, message)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated rule file and what was derived from its text."""

    config: Config
    path: Path
    text: str
    version: str
    base_dir: Path
    warnings: list[Located] = field(default_factory=list)
    fixtures: list[FixtureResult] = field(default_factory=list)
    fixture_failures: list[Located] = field(default_factory=list)

    def resolve(self, relative: str) -> Path:
        """A path from the rule file, resolved against the rule file's folder."""
        return (
            (self.base_dir / relative).resolve()
            if not Path(relative).is_absolute()
            else Path(relative)
        )

    @property
    def spool(self) -> Path:
        """The spool folder."""
        return self.resolve(self.config.spool)

    def shipped(self) -> Shipped:
        """What a child process needs to load this same config (picklable, small)."""
        return (str(self.path), self.text, str(self.base_dir))


Shipped = tuple[str, str, str]  # a rule file's path, text and folder, sent to a child


def load_shipped(shipped: Shipped) -> LoadedConfig:
    """Load a config a parent process shipped (`LoadedConfig.shipped`)."""
    path, text, base_dir = shipped
    return load(Path(path), base_dir=Path(base_dir), text=text)


def config_version(text: str) -> str:
    """The config version: a short hash of the rule file's text."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load(path: Path, *, base_dir: Path | None = None, text: str | None = None) -> LoadedConfig:
    """Read and validate a rule file; raise ConfigError listing every problem."""
    name = str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([Located(name, 1, 1, f"cannot read the rule file: {exc}")]) from None
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
    problems = _scan(name, root, [])
    try:
        config = Config.model_validate(data, context=validation_context(data))
    except ValidationError as exc:
        # One message per place: pydantic's, then the scan's explanation of it.
        scanned = {(p.line, p.column): p for p in problems}
        for p in _locate_all(name, root, exc):
            hint = scanned.get((p.line, p.column))
            if hint is None:
                problems.append(p)
            else:
                why = hint.message.split(": ", 1)[-1]
                problems[problems.index(hint)] = Located(
                    p.file, p.line, p.column, f"{p.message} ({why})"
                )
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    folder = base_dir if base_dir is not None else path.resolve().parent
    results = run_all(config)
    return LoadedConfig(
        config=config,
        path=path,
        text=text,
        version=config_version(text),
        base_dir=folder,
        warnings=_warnings(name, root, config, data),
        fixtures=results,
        fixture_failures=[
            _at(
                name,
                root,
                ["tests", i, "expect"],
                f"tests.{i}: fixture {r.name!r} failed: "
                + ", ".join(
                    f"{k} expected {describe(v, k)} got {describe(r.got.get(k), k)}"
                    for k, v in r.expected.items()
                    if r.got.get(k) != v
                ),
            )
            for i, r in enumerate(results)
            if not r.passed
        ],
    )


def _at(
    name: str, root: yaml.Node, loc: list[Any], message: str, *, point_at_key: bool = False
) -> Located:
    node, _ = _walk(root, loc, point_at_key=point_at_key)
    return Located(name, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _locate_all(name: str, root: yaml.Node, exc: ValidationError) -> list[Located]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if err["type"] == "unknown_key":
            loc.append(err["ctx"]["key"])
        node, key_path = _walk(root, loc, point_at_key=err["type"] == "unknown_key")
        message = _message(err, node)
        path = ".".join(str(p) for p in key_path) or "(top)"
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        problems.append(Located(name, line, col, f"{path}: {message}"))
    return sorted(set(problems), key=lambda p: (p.line, p.column))


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


def _message(err: Any, node: yaml.Node) -> str:
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


def _warnings(name: str, root: yaml.Node, config: Config, data: Any) -> list[Located]:
    """Things `check` points out without refusing the file."""
    out: list[Located] = []
    for i, rule in enumerate(config.rules):
        for uid in rule.match.sop_class or ():
            if not sopclass.is_storage_class(uid):
                out.append(
                    _at(
                        name,
                        root,
                        ["rules", i, "match", "sop_class"],
                        f"rules.{i}.match.sop_class: {uid} is not a known storage SOP class"
                        + ("" if sopclass.is_known_uid(uid) else " (fine for a private class)"),
                    )
                )
    for dname, dest in config.destinations.items():
        if isinstance(dest, StowDestination) and dest.auth and _cleartext(dest.url):
            out.append(
                _at(
                    name,
                    root,
                    ["destinations", dname, "url"],
                    f"destinations.{dname}.url: {dest.auth.type} auth over plain http sends "
                    "the secret unencrypted: use https",
                )
            )
        if isinstance(dest, DicomDestination) and dest.tls and not dest.tls.verify:
            out.append(
                _at(
                    name,
                    root,
                    ["destinations", dname, "tls", "verify"],
                    f"destinations.{dname}.tls.verify: false: the destination's certificate is"
                    " not checked, anyone in the path can read and change what is sent",
                )
            )
        if isinstance(dest, FilesystemDestination) and "{" not in dest.path:
            out.append(
                _at(
                    name,
                    root,
                    ["destinations", dname, "path"],
                    f"destinations.{dname}.path: no {{Keyword}} in the template: every "
                    "instance goes to the same file",
                )
            )

    def line_of(loc: lint.Loc) -> int:
        return _at(name, root, list(loc), "").line

    for finding in lint.lint(config, data, line_of):
        out.append(
            _at(name, root, list(finding.loc), finding.message, point_at_key=finding.point_at_key)
        )
    return sorted(out, key=lambda w: (w.line, w.column))


def _cleartext(url: str) -> bool:
    """An http:// URL to anything but this machine."""
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return url.startswith("http:") and host not in ("localhost", "127.0.0.1", "::1")
