"""The 130 storage SOP classes of the shared seed table (pynetdicom's Storage Service page).

The seed lives beside the repository (``../shared`` from the repo root): CI runs in a
fresh clone with a copy of ``shared/`` next to it. ``DICOM_ROUTER_SHARED`` overrides.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["SEED_FILE", "SEED_SOP_CLASSES", "find_seed_file", "parse_seed"]

SEED_NAME = "seeds/000_b20e4b4a6ed4bc04.txt"
EXPECTED_ROWS = 130

# A table row: | 1.2.840.10008.5.1.4.1.1.2 | CTImageStorage | A.3 |
# The file is reStructuredText flattened onto one line, so match rows anywhere in the text.
_ROW = re.compile(r"\|\s*(\d+(?:\.\d+)+)\s*\|\s*([A-Za-z][A-Za-z0-9]*)\s*\|\s*(A\.[\d.]+)\s*\|")


def find_seed_file() -> Path:
    """Locate the seed table: ``<repo>/../shared`` first, then ``$DICOM_ROUTER_SHARED``."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / SEED_NAME]
    if env := os.environ.get("DICOM_ROUTER_SHARED"):
        candidates.append(Path(env) / SEED_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "seed SOP class table not found; tried "
        + ", ".join(map(str, candidates))
        + " (set DICOM_ROUTER_SHARED to the shared/ folder)"
    )


def parse_seed(text: str) -> list[tuple[str, str]]:
    """Return (uid, name) for every table row, in file order."""
    return [(uid, name) for uid, name, _annex in _ROW.findall(text)]


SEED_FILE = find_seed_file()
SEED_SOP_CLASSES: list[tuple[str, str]] = parse_seed(SEED_FILE.read_text(encoding="utf-8"))
# A real check, not `assert`: it must also hold under `python -O`.
if len(SEED_SOP_CLASSES) != EXPECTED_ROWS:
    raise RuntimeError(
        f"{SEED_FILE}: parsed {len(SEED_SOP_CLASSES)} SOP class rows, expected {EXPECTED_ROWS}"
    )
