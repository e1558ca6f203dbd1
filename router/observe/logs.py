"""Logging set-up: human-readable lines by default, one JSON object per line for the journal.

Every record, ours and the libraries' (pydicom, pynetdicom, httpx, watchfiles...), reaches
the one root handler set here, and comes out as one line in either format:

- line breaks and other control characters in a message are escaped (`\\n`), so a value a
  sender controls cannot start a second line that reads as a record of its own;
- an exception is reduced to its last line (`Type: message`); the traceback, and a
  record's stack, are printed only with `--debug`;
- Python warnings are logged (logger `py.warnings`, one line) instead of printed on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import asdict, is_dataclass
from types import TracebackType
from typing import Any, TextIO

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Every C0 control but tab, DEL, and the characters Unicode (and Python's splitlines)
# treat as line breaks: escaped, so that no message can span two lines.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85) if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """`text` with line breaks and control characters escaped (a tab stays a tab)."""
    return text.rstrip().translate(_ESCAPES)


def exception_line(exc_info: ExcInfo) -> str:
    """The last line of the exception's traceback, `Type: message`, on one line."""
    exc_type, value, _ = exc_info
    text = str(value)
    return one_line(f"{exc_type.__name__}: {text}" if text else exc_type.__name__)


def _message(record: logging.LogRecord) -> str:
    """The record's message; a library's bad format arguments must not lose the record
    (logging would print its own multi-line error on stderr instead)."""
    try:
        return record.getMessage()
    except Exception:
        return f"{record.msg} (unformattable arguments {record.args!r})"


def _exc_info(record: logging.LogRecord) -> ExcInfo | None:
    info = record.exc_info
    if info and info[0] is not None and info[1] is not None:
        return (info[0], info[1], info[2])
    return None


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: message` on one line; with `debug`, a traceback on the lines after."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(_message(record))
        exc = _exc_info(record)
        if exc is not None:
            summary = exception_line(exc)
            # log.exception(exc) repeats the exception as the message: say it once.
            message = summary if message in ("", one_line(str(exc[1]))) else f"{message}: {summary}"
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if self.debug:
            if exc is not None:
                line += "\n" + self.formatException(exc).rstrip()
            if record.stack_info:
                line += "\n" + self.formatStack(record.stack_info).rstrip()
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra` fields become keys (dataclasses flattened).

    `exception` is the exception's last line, its whole traceback with `debug`."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD:
                continue
            if is_dataclass(value) and not isinstance(value, type):
                out.update({k: _plain(v) for k, v in asdict(value).items()})
            else:
                out[key] = _plain(value)
        exc = _exc_info(record)
        if exc is not None:
            out["exception"] = self.formatException(exc) if self.debug else exception_line(exc)
        if record.stack_info and self.debug:
            out["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes every control character (and U+2028/9): always one line.
        return json.dumps(out, default=str)


def _plain(value: Any) -> Any:
    return (
        str(value)
        if not isinstance(value, str | int | float | bool | list | tuple | None)
        else value
    )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """warnings.showwarning: a record of `py.warnings`, without the source line."""
    if file is not None:  # an explicit file asked for (warnings.showwarning's contract)
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    logging.getLogger("py.warnings").warning(
        "%s: %s (%s:%d)", category.__name__, message, filename, lineno
    )


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler whose own failures (stdout gone, a formatter's bug) are reported in
    one line on stderr, not in logging's multi-line "--- Logging error ---" block."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()
        if not logging.raiseExceptions or exc[0] is None or exc[1] is None:
            return
        try:
            what = exception_line((exc[0], exc[1], exc[2]))
            sys.stderr.write(f"logging error in a record of {record.name}: {what}\n")
        except Exception:
            pass  # stderr is gone too: nothing left to tell


def setup(fmt: str = "text", debug: bool = False) -> None:
    """Configure the root logger once, writing to stdout (systemd's journal takes it)."""
    handler = _Handler(sys.stdout)
    handler.setFormatter(JsonFormatter(debug) if fmt == "json" else TextFormatter(debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    warnings.showwarning = _show_warning
    if debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
