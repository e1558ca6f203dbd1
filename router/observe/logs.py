"""Logging set-up: human-readable lines by default, one JSON object per line for the journal."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, is_dataclass
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra` fields become keys (dataclasses flattened)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD:
                continue
            if is_dataclass(value) and not isinstance(value, type):
                out.update({k: _plain(v) for k, v in asdict(value).items()})
            else:
                out[key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _plain(value: Any) -> Any:
    return (
        str(value)
        if not isinstance(value, str | int | float | bool | list | tuple | None)
        else value
    )


def setup(fmt: str = "text", debug: bool = False) -> None:
    """Configure the root logger once, writing to stdout (systemd's journal takes it)."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
