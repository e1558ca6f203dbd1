"""A pytest plugin that runs pynetdicom's own tests with router/netlayer installed.

    make pynetdicom-tests

The installed wheel of the pinned pynetdicom (3.0.4) ships its test suite as
`pynetdicom.tests`; this plugin installs our changes before those tests import anything,
and leaves out the tests that check what we changed on purpose (listed below, each with
its reason): every other test must pass as it does upstream.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from router.net import netlayer

_LOG_TEXT = "asserts the text of pynetdicom's log line for a read or decode netlayer replaced"
DEVIATIONS = {
    "test_dul.py::TestDUL::test_recv_failure_aborts": _LOG_TEXT,
    "test_dul.py::TestDUL::test_recv_short_aborts": _LOG_TEXT,
    "test_dul.py::TestDUL::test_recv_missing_data": _LOG_TEXT,
    "test_dul.py::TestDUL::test_recv_bad_pdu_aborts": _LOG_TEXT,
    "test_transport.py::TestTLS::test_tls_yes_server_not_client": _LOG_TEXT,
    "test_assoc.py::TestAssociation::test_invalid_context": (
        "a command on a context that was not accepted is now aborted by the DIMSE decoder,"
        " with our log line, before pynetdicom's service dispatch would log its own"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    """Install the changes (received datasets go to a scratch folder)."""
    netlayer.install(Path(tempfile.mkdtemp(prefix="netlayer-upstream-")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the deliberate deviations, saying which and why."""
    kept, dropped = [], []
    for item in items:
        (dropped if _name(item) in DEVIATIONS else kept).append(item)
    for item in dropped:
        print(f"deselected {_name(item)}: {DEVIATIONS[_name(item)]}")
    items[:] = kept
    config.hook.pytest_deselected(items=dropped)


def _name(item: pytest.Item) -> str:
    """`test_x.py::Class::test` (with --pyargs the node ID lacks the file's name)."""
    return f"{item.path.name}::{item.nodeid.split('::', 1)[1].split('[')[0]}"
