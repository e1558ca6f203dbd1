"""One line per record, no traceback unless --debug (design §logging; issue 15, finding 2).

Every logger's records, ours and the libraries' (pydicom's decoders log ERROR with a
traceback when a frame cannot be decoded), come out through the router's formatter as one
line, in `--log-format text` and `json`. First over a real daemon that decompresses for an
uncompressed-only storescp (GDCM's fallback for JPEG-lossy.dcm, a JPEG 2000 file no codec
reads); then `observe.logs` alone in a fresh interpreter, where records from pydicom, a
warning and a value with a line break in it are logged on purpose.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom.data
import pytest

from tests.daemon import RouterDaemon
from tests.dicomgen import make_instance
from tests.peers import storescu
from tests.test_forward import dest, queue_list, rule_file, send, states, wait_until
from tests.test_scp import rule_file as scp_rule_file
from tests.test_transcode import UncompressedSCP

pytestmark = pytest.mark.interop

TEXT_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)
JSON_KEYS = {"time", "level", "logger", "message"}


def assert_one_record_per_line(log: str, log_format: str) -> list[str]:
    """Every line of `log` is a whole record of our formatter; returns the lines."""
    lines = log.splitlines()
    assert lines, "nothing logged"
    for line in lines:
        if log_format == "json":
            record = json.loads(line)  # raises on a line that is not one JSON value
            assert isinstance(record, dict) and record.keys() >= JSON_KEYS, line
        else:
            assert TEXT_RECORD.match(line), f"not a record of ours: {line!r}"
    return lines


# --------------------------------------------------------------------------- the daemon


@pytest.fixture
def plain_pacs(tmp_path: Path) -> Iterator[UncompressedSCP]:
    """A running storescp that accepts only uncompressed syntaxes; stopped after."""
    with UncompressedSCP(tmp_path / "plain-pacs") as scp:
        yield scp


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_decoder_failures_log_one_line_records_and_no_traceback(
    router: Callable[..., RouterDaemon],
    plain_pacs: UncompressedSCP,
    tmp_path: Path,
    log_format: str,
) -> None:
    """JPEG-lossy.dcm (pylibjpeg fails, GDCM decodes it) and a broken JPEG 2000 file (every
    decoder fails: a dead letter) to an uncompressed-only storescp: the log has no traceback,
    every line is one record, the dead letter is logged, and the daemon still serves."""
    lossy = Path(pydicom.data.get_testdata_file("JPEG-lossy.dcm"))
    broken = Path(pydicom.data.get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))
    d = router(
        rule_file({"pacs": dest(plain_pacs.ae_title, plain_pacs.port)}, ["forward: pacs"]),
        args=("--log-format", log_format),
    )
    assert send(d, [lossy, broken]) == [0, 0]
    wait_until("both handled", lambda: sorted(states(d, "pacs")) == ["dead", "delivered"])
    make_instance(tmp_path / "ct.dcm", pixel_bytes=1024)
    assert send(d, [tmp_path / "ct.dcm"]) == [0]
    wait_until("the next instance delivered", lambda: states(d, "pacs").count("delivered") == 2)
    (row,) = queue_list(d)[0]
    assert "J2K" in row.error, row.error

    log = d.log()
    assert "Traceback" not in log, log
    lines = assert_one_record_per_line(log, log_format)
    dead = [line for line in lines if "dead" in line and "J2K" in line]
    assert len(dead) == 1, log  # the dead letter, with every decoder's reason, in one record


# Values pydicom warns about when the rule engine reads PatientName (issue 22, row 4).
PYDICOM_WARNS = [
    ("ISO_IR 999", "Unknown encoding 'ISO_IR 999'"),
    ("ISO 2022 IR 87", "with encodings: iso2022_jp - using replacement characters"),
]


def test_pydicom_warnings_in_a_worker_are_json_records(
    router: Callable[..., RouterDaemon], tmp_path: Path
) -> None:
    """A json daemon whose rule reads PatientName of instances with an unknown or broken
    character set: pydicom's warnings (in the worker) are records, every line is JSON."""
    rule = "{name: by-name, match: {tags: {PatientName: 'X*'}}, actions: [{store: archive}]}"
    d = router(scp_rule_file(rules=(rule,)), args=("--log-format", "json"))
    files = []
    for n, (charset, _) in enumerate(PYDICOM_WARNS):
        files.append(tmp_path / f"{n}.dcm")
        with warnings.catch_warnings():  # pydicom warns here as well, about the same
            warnings.simplefilter("ignore")
            make_instance(files[-1], SpecificCharacterSet=charset, PatientName="XABC")
        # bytes no character set decodes, written raw
        files[-1].write_bytes(files[-1].read_bytes().replace(b"XABC", b"X\xe9\xff\xfe"))
    assert storescu(d.port, files).returncode == 0
    d.stop()
    lines = assert_one_record_per_line(d.log(), "json")
    warned = [json.loads(line) for line in lines if '"py.warnings"' in line]
    for _, text in PYDICOM_WARNS:
        assert any(text in record["message"] for record in warned), (text, warned)


# --------------------------------------------------------------------------- observe.logs

SCRIPT = """
import logging, sys, warnings
import pydicom.data
from pydicom import dcmread
from router.observe import logs

logs.setup(sys.argv[1], debug=sys.argv[2] == "debug")
broken = dcmread(pydicom.data.get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))
try:
    broken.pixel_array  # pydicom logs each decoder's failure: ERROR, with a traceback
except Exception:
    logging.getLogger("router.forward").exception("cannot decode")
logging.getLogger("router.scp").warning("calling AE %s", sys.argv[3])
warnings.warn("a warning\\non two lines")
"""
# What a sender could put in a value the router logs: a line break, then a forged record.
FORGED = "EVIL\r\n2026-12-06 04:00:00,000 ERROR router.scp: a forged record\u2028"


def _logged(log_format: str, debug: bool) -> str:
    """What the script's logging wrote on stdout (GDCM's own prints go to stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, log_format, "debug" if debug else "", FORGED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def logged() -> Callable[[str, bool], str]:
    """_logged, each (format, debug) run once for the module."""
    runs: dict[tuple[str, bool], str] = {}
    return lambda fmt, debug: runs.setdefault((fmt, debug), _logged(fmt, debug))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_library_exception_is_one_line_without_traceback(
    logged: Callable[[str, bool], str], log_format: str
) -> None:
    """pydicom's ERROR records (exc_info set) and ours: the exception's last line only."""
    lines = assert_one_record_per_line(logged(log_format, False), log_format)
    assert "Traceback" not in "\n".join(lines)
    pydicom_errors = [line for line in lines if "pydicom.pixels.decoders.base" in line]
    assert pydicom_errors and all("J2K" in e or "encode" in e for e in pydicom_errors[:2])
    (ours,) = [line for line in lines if "cannot decode" in line]
    assert "RuntimeError: Unable to decode" in ours, ours


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_line_break_in_a_logged_value_cannot_forge_a_record(
    logged: Callable[[str, bool], str], log_format: str
) -> None:
    """The forged record stays inside the real one; json keeps the value exactly."""
    lines = assert_one_record_per_line(logged(log_format, False), log_format)
    (line,) = [line for line in lines if "a forged record" in line]
    if log_format == "json":
        assert json.loads(line)["message"] == f"calling AE {FORGED}"
    else:
        assert " WARNING router.scp: calling AE EVIL\\r\\n2026-12-06 04:00:00,000 ERROR" in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_warning_is_a_one_line_record(
    logged: Callable[[str, bool], str], log_format: str
) -> None:
    """warnings.warn goes through logging (py.warnings), not stderr's two-line format."""
    lines = assert_one_record_per_line(logged(log_format, False), log_format)
    (line,) = [line for line in lines if "py.warnings" in line]
    assert "UserWarning: a warning" in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_debug_logs_the_traceback(logged: Callable[[str, bool], str], log_format: str) -> None:
    """With --debug the traceback is there (json: in the record's `exception`)."""
    out = logged(log_format, True)
    assert "Traceback (most recent call last)" in out
    if log_format == "json":
        assert_one_record_per_line(out, log_format)
        (ours,) = [json.loads(line) for line in out.splitlines() if "cannot decode" in line]
        assert ours["exception"].startswith("Traceback"), ours
