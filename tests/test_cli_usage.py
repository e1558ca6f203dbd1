"""The command line as a user meets it: help, exit codes, pipes, which spool, which address."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from router.cli import _parser, load_for_run, main
from router.config.destinations import FilesystemDestination
from router.spool.database import Spool
from tests.daemon import DICOM_ROUTER

REPO = Path(__file__).resolve().parent.parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_every_argument_has_help() -> None:
    """Every option and positional argument of every command says what it is for."""
    parser = _parser()
    missing = [
        f"{name} {action.dest}"
        for name, sub in {"": parser, **_subparsers(parser)}.items()
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    assert all(sub.description for sub in _subparsers(parser).values())


def test_help_starts_with_what_the_program_does() -> None:
    """`--help` opens with a sentence for users, not a code comment, and lists exit codes."""
    out = subprocess.run([DICOM_ROUTER, "--help"], capture_output=True, text=True, check=True)
    description = out.stdout.split("\n\n")[1]
    assert description.startswith("Route DICOM C-STORE requests")
    assert "module" not in out.stdout
    assert "1 invalid rule file or arguments" in " ".join(out.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [["run", "--bogus"], ["run", "--log-format", "xml"], ["check"], ["nosuch"], []],
    ids=["unknown-option", "bad-choice", "missing-file", "unknown-command", "no-command"],
)
def test_argument_error_exits_1(argv: list[str]) -> None:
    """A bad argument exits 1 with usage on stderr (the unit's RestartPreventExitStatus=1)."""
    out = subprocess.run([DICOM_ROUTER, *argv], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("usage: dicom-router")
    assert "error:" in out.stderr.splitlines()[-1]


def test_closed_pipe_is_quiet() -> None:
    """`dicom-router schema | head -c 10`: no "Broken pipe" message, exit 0."""
    out = subprocess.run(
        f"set -o pipefail; {DICOM_ROUTER} schema | head -c 10",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
    )
    assert out.stdout == '{\n  "$defs'
    assert out.stderr == ""
    assert out.returncode == 0


def test_queue_and_trace_without_file_find_the_embedded_configs_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no FILE, `queue` and `trace` read the spool `run` makes with the embedded config."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DICOM_ROUTER_CONFIG", raising=False)
    assert load_for_run(None).spool == tmp_path / "dicom-router-data" / ".spool"
    Spool(tmp_path / "dicom-router-data" / ".spool").close()  # as the daemon's start-up does
    assert main(["queue"]) == 0
    assert main(["queue", "retry"]) == 0
    assert main(["trace", "1.2.3.4"]) == 1  # not in the log: the spool was found
    out = capsys.readouterr()
    assert "SOP Instance UID" in out.out
    assert "0 dead letters queued again" in out.out
    assert "1.2.3.4: not in the decision log" in out.out
    assert "no spool here" not in out.err


def test_queue_without_file_before_the_daemon_ran_names_the_embedded_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No spool yet: one line naming the folder looked in and the embedded config."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DICOM_ROUTER_CONFIG", raising=False)
    assert main(["trace", "1.2.3.4"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"dicom-router: {tmp_path}/dicom-router-data/.spool: no spool here yet "
        "(has the daemon run with config/router.yaml (embedded)?)\n"
    )


@pytest.mark.parametrize(
    "config",
    ["config/router.yaml", "config/examples/gateway.yaml", "config/examples/research-split.yaml"],
)
def test_example_config_writes_into_an_ignored_folder(config: str) -> None:
    """Run from the checkout, an example's spool and folders are ones git ignores."""
    loaded = load_for_run(REPO / config)
    folders = [loaded.spool] + [
        loaded.resolve(dest.path.split("{", 1)[0])
        for dest in loaded.config.destinations.values()
        if isinstance(dest, FilesystemDestination)
    ]
    for folder in folders:
        if folder.is_relative_to(REPO):
            check = subprocess.run(
                ["git", "-C", REPO, "check-ignore", "-q", (folder / "x.dcm").relative_to(REPO)]
            )
            assert check.returncode == 0, f"{folder} is not ignored by git"


def test_embedded_config_listens_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded default (and its copy config/router.yaml) listens on 127.0.0.1."""
    monkeypatch.delenv("DICOM_ROUTER_CONFIG", raising=False)
    embedded = load_for_run(None)
    assert embedded.config.listen.host == "127.0.0.1"
    assert embedded.text == (REPO / "config" / "router.yaml").read_text(encoding="utf-8")
