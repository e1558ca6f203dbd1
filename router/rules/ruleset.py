"""Loading a rule file: read, validate, warn, run the fixtures; FILE:LINE:COL errors.

The YAML and its source marks are `router.config.source`'s; this module puts the steps
together and keeps what a running daemon needs of the result (`LoadedConfig`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from router.config.actions import DeidentifyAction, ForwardAction
from router.config.fleet import cautions as fleet_cautions
from router.config.model import Config, validation_context
from router.config.source import Source, key_path, parse
from router.dicom import sopclass
from router.errors import ConfigError, Located
from router.rules import lint
from router.rules.fixtures import FixtureResult, describe, run_all


class Shipped(NamedTuple):
    """A rule file's path, text and folder, sent to a child process (picklable, small)."""

    path: str
    text: str
    base_dir: str


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
        """What a child process needs to load this same config."""
        return Shipped(str(self.path), self.text, str(self.base_dir))


def load_shipped(shipped: Shipped) -> LoadedConfig:
    """Load a config a parent process shipped (`LoadedConfig.shipped`)."""
    return load(Path(shipped.path), base_dir=Path(shipped.base_dir), text=shipped.text)


def config_version(text: str) -> str:
    """The config version: a short hash of the rule file's text."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load(path: Path, *, base_dir: Path | None = None, text: str | None = None) -> LoadedConfig:
    """Read and validate a rule file; raise ConfigError listing every problem."""
    if text is None:
        text = _read(path)
    source = parse(str(path), text)
    config = _validate(source)
    results = run_all(config)
    base_dir = base_dir if base_dir is not None else path.resolve().parent
    return LoadedConfig(
        config=config,
        path=path,
        text=text,
        version=config_version(text),
        base_dir=base_dir,
        warnings=_warnings(source, config, base_dir),
        fixtures=results,
        fixture_failures=_fixture_failures(source, results),
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Located(str(path), 1, 1, f"cannot read the rule file: {exc}")]) from None


def _validate(source: Source) -> Config:
    """The Config, or ConfigError with every problem, the scan's and Pydantic's, in file order."""
    problems = source.scan()
    try:
        config = Config.model_validate(source.data, context=validation_context(source.data))
    except ValidationError as exc:
        # One message per place: pydantic's, then the scan's explanation of it.
        scanned = {(p.line, p.column): p for p in problems}
        for p in source.locate(exc):
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
    return config


def _fixture_failures(source: Source, results: list[FixtureResult]) -> list[Located]:
    """One located problem per failing fixture, at its `expect`."""
    return [
        source.at(
            ["tests", i, "expect"],
            f"{key_path(('tests', i))}: fixture {r.name!r} failed: "
            + ", ".join(
                f"{k} expected {describe(v, k)} got {describe(r.got.get(k), k)}"
                for k, v in r.expected.items()
                if r.got.get(k) != v
            ),
        )
        for i, r in enumerate(results)
        if not r.passed
    ]


def _secret_files(source: Source, config: Config, base_dir: Path) -> list[Located]:
    """HTTP auth secret files (STOW-RS, webhook) that cannot be read now."""
    out = []
    for dname, dest in config.destinations.items():
        for keys, file in dest.secret_files():
            path = base_dir / file
            try:
                empty = not path.read_text(encoding="utf-8").strip()
                problem = "is empty" if empty else ""
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror or exc})"
            except UnicodeDecodeError:
                problem = "is not UTF-8 text"
            if problem:
                where = ".".join(("destinations", dname, *keys))
                out.append(source.at(["destinations", dname, *keys], f"{where}: {path} {problem}"))
    return out


def _relayed_without_destination(source: Source, config: Config) -> list[Located]:
    """`answer: relayed` with no destination to ask: it commits like `delivered`."""
    commitment = config.storage_commitment
    if commitment is None or commitment.answer != "relayed":
        return []
    if any(getattr(d, "commitment", False) for d in config.destinations.values()):
        return []
    return [
        source.at(
            ["storage_commitment", "answer"],
            "storage_commitment.answer: relayed, but no destination has commitment: true, so"
            " nothing is asked and it commits like delivered",
        )
    ]


def _deidentified_to_commitment(source: Source, config: Config) -> list[Located]:
    """A forward after `deidentify` to a `commitment: true` destination under `relayed`:
    asked with the modality's UIDs, the destination (holding other UIDs) would fail them."""
    commitment = config.storage_commitment
    if commitment is None or commitment.answer != "relayed":
        return []
    out = []
    chains: list[tuple[list[str | int], list[Any]]] = [
        (["rules", i, "actions"], rule.actions) for i, rule in enumerate(config.rules)
    ]
    chains.append((["default"], config.default))
    for keys, actions in chains:
        deidentified = False
        for j, action in enumerate(actions):
            deidentified = deidentified or isinstance(action, DeidentifyAction)
            name = action.forward.to if isinstance(action, ForwardAction) else ""
            if deidentified and getattr(config.destinations.get(name), "commitment", False):
                where = [*keys, j]
                out.append(
                    source.at(
                        where,
                        f"{key_path(tuple(where))}: a de-identified copy goes to {name}, which has"
                        " commitment: true: asked about the modality's UIDs it would fail them"
                        " (the modality keeps its copy); set commitment: false on it",
                    )
                )
    return out


def _warnings(source: Source, config: Config, base_dir: Path) -> list[Located]:
    """Things `check` points out without refusing the file."""
    out: list[Located] = _secret_files(source, config, base_dir)
    metrics = config.metrics
    if metrics is not None and metrics.pages is None and not metrics.pages_on:
        out.append(
            source.at(
                ["metrics", "host"],
                f"metrics.host: {metrics.host} is not loopback and there is no users_file"
                " or token_file, so the status pages are off (set one to serve them with a login,"
                " or pages: false to say so)",
            )
        )
    for i, rule in enumerate(config.rules):
        for uid in rule.match.sop_class or ():
            if not sopclass.is_storage_class(uid):
                out.append(
                    source.at(
                        ["rules", i, "match", "sop_class"],
                        f"{key_path(('rules', i, 'match', 'sop_class'))}: {uid} is not a known"
                        " storage SOP class"
                        + ("" if sopclass.is_known_uid(uid) else " (fine for a private class)"),
                    )
                )
    out.extend(_relayed_without_destination(source, config))
    out.extend(_deidentified_to_commitment(source, config))
    for dname, dest in config.destinations.items():
        for keys, message in dest.cautions():
            where = ".".join(("destinations", dname, *keys))
            out.append(source.at(["destinations", dname, *keys], f"{where}: {message}"))
    for key, message in fleet_cautions(config.fleet, base_dir) if config.fleet else ():
        out.append(source.at(["fleet", key], f"fleet.{key}: {message}"))

    def line_of(loc: lint.Loc) -> int:
        return source.at(list(loc), "").line

    for finding in lint.lint(config, source.data, line_of):
        out.append(source.at(list(finding.loc), finding.message, point_at_key=finding.point_at_key))
    return sorted(out, key=lambda w: (w.line, w.column))
