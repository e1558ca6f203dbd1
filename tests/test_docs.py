"""The docs match the code: every command line they show parses, every rule file checks.

Rule-file blocks are the ```yaml blocks of README.md and docs/*.md. A block marked with
`<!-- check: fragment -->` on the line before it shows a few keys: the keys it lacks
among `version`, `listen`, `default` and `destinations` (a DICOM `pacs` and a folder
`archive`) are added before it is checked. `<!-- check: skip (why) -->` skips a block
(an error shown on purpose, a piece of one rule, another program's config): SKIPPED
counts them, so that a new skip is a decision.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from router.cli import _parser
from router.process.daemon import FORWARDER_STOP_SECONDS, WORKER_EXIT_SECONDS
from router.receive.stack import ABORT_SECONDS, DRAIN_SECONDS
from router.rules.ruleset import load
from tests.test_cli_usage import _subparsers

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIPPED = 6
MARKER = re.compile(r"<!-- check: (fragment|skip \(.+\)) -->\n(?:\n)?$")
# A command line: `dicom-router`, global options, a command and its arguments, up to
# the end of the code span or line, a redirection or a comment (a pipe: see _argv).
COMMAND = re.compile(
    r"(?<![\w/-])(?:\S*/)?dicom-router((?:\s+--?[a-z][\w-]*)*\s+"
    r"(?:run|check|explain|schema|queue|trace)\b[^`>&;#\n]*)"
)
# Placeholders in synopses, and what stands in for them.
PLACEHOLDERS = {"FILE": "router.yaml", "DICOM_FILE...": "a.dcm", "UID": "1.2.3"}
# What the base supplies to a fragment, by top-level key.
BASE = {
    "version": "version: 1",
    "listen": "listen: {ae_title: DOCS}",
    "default": "default: [discard]",
    "destinations": "destinations:\n"
    "  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}\n"
    '  archive: {path: "archive/{SOPInstanceUID}.dcm"}',
}


def _blocks() -> list[tuple[str, str, str]]:
    """(page:line, marker or "", text) of every ```yaml block."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.M | re.S):
            before = text[: m.start()]
            mark = MARKER.search(before[-200:])
            where = f"{page.relative_to(REPO)}:{before.count(chr(10)) + 1}"
            out.append((where, mark.group(1) if mark else "", m.group(1)))
    return out


def _commands() -> list[tuple[str, str]]:
    """(page:line, argument text) of every `dicom-router COMMAND ...` shown."""
    out = []
    for page in [*PAGES, REPO / "systemd" / "dicom-router.service"]:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in COMMAND.finditer(line):
                out.append((f"{page.relative_to(REPO)}:{n}", m.group(1)))
    return out


def _argv(shown: str) -> list[str]:
    """The arguments of a shown command line; a synopsis's choices and options dropped."""
    shown = re.split(r"\s\|\s", shown.replace("\\|", "|"))[0].strip().rstrip(".,:)")
    shown = re.sub(r"\[([^\]|]*)\|[^\]]*\]", r"\1", shown)  # [list|retry|purge] -> list
    shown = re.sub(r"\[(--[\w-]+)(?: [A-Z]+)?\]", "", shown)  # an optional option
    shown = re.sub(r"\[([^\]]*)\]", r"\1", shown)  # [FILE] -> FILE, [-c FILE] -> -c FILE
    return [PLACEHOLDERS.get(word, word) for word in shlex.split(shown)]


class _Refused(Exception):
    pass


def _strict_parser() -> argparse.ArgumentParser:
    """The real parser, raising instead of exiting."""
    parser = _parser()

    def error(message: str) -> None:
        raise _Refused(message)

    for p in [parser, *_subparsers(parser).values()]:
        p.error = error  # type: ignore[method-assign,assignment]
    return parser


@pytest.mark.parametrize(("where", "shown"), _commands(), ids=lambda v: str(v)[:60])
def test_command_line_shown_in_the_docs_parses(where: str, shown: str) -> None:
    """Each `dicom-router ...` in README, docs and the unit parses with the real parser."""
    argv = _argv(shown)
    if len(argv) == 1:
        return  # the command's name in a sentence ("`dicom-router check` exits 1 ..."), not a line
    try:
        _strict_parser().parse_args(argv)
    except _Refused as exc:
        pytest.fail(f"{where}: dicom-router {shown.strip()} -> {argv}: {exc}")


def test_the_docs_show_every_command() -> None:
    """The command-line scan finds every command (so that a broken regex cannot pass)."""
    found = {_argv(shown)[0] for _, shown in _commands() if not _argv(shown)[0].startswith("-")}
    assert found == {"run", "check", "explain", "schema", "queue", "trace"}


@pytest.mark.parametrize(
    ("where", "mark", "text"),
    [b for b in _blocks() if not b[1].startswith("skip")],
    ids=lambda v: str(v)[:40],
)
def test_rule_file_block_in_the_docs_passes_check(
    tmp_path: Path, where: str, mark: str, text: str
) -> None:
    """Each yaml block (a fragment with the keys it lacks) loads, and its fixtures pass."""
    if mark == "fragment":
        present = yaml.safe_load(text)
        text += "".join(f"{line}\n" for key, line in BASE.items() if key not in present)
    path = tmp_path / "router.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load(path)  # a ConfigError fails the test with every located problem
    assert loaded.fixture_failures == [], where


def test_few_blocks_are_skipped() -> None:
    """Exactly SKIPPED blocks carry a skip marker, each with its reason."""
    assert len([b for b in _blocks() if b[1].startswith("skip")]) == SKIPPED


def test_no_page_repeats_a_heading() -> None:
    """No page has two headings of the same text (its anchors would collide)."""
    for page in PAGES:
        headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
        assert len(headings) == len(set(headings)), page


def test_docs_give_the_longest_shutdown_the_code_allows() -> None:
    """The docs' "at most N s" for a SIGTERM shutdown is the sum of the code's bounds."""
    longest = DRAIN_SECONDS + ABORT_SECONDS + WORKER_EXIT_SECONDS + FORWARDER_STOP_SECONDS
    for name in ("docs/operations.md", "docs/deployment.md", "docs/security.md"):
        text = " ".join((REPO / name).read_text(encoding="utf-8").split())
        assert f"{longest:.0f} s" in text, name
    unit = (REPO / "systemd" / "dicom-router.service").read_text(encoding="utf-8")
    assert f"{longest:.0f} s at most" in unit


def test_pip_install_build_folder_is_ignored() -> None:
    """`pip install .` leaves setuptools' build/ behind: git ignores it."""
    check = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", "build/lib/router/cli.py"])
    assert check.returncode == 0
