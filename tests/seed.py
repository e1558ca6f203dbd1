"""The 130 storage SOP classes of pynetdicom's Storage Service Class page, kept in the repo.

`tests/data/storage-sop-classes.tsv` is that page's table (see its header for where the
facts come from, typos included): tests need nothing outside the repository.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SEED_FILE", "SEED_SOP_CLASSES", "parse_seed"]

SEED_FILE = Path(__file__).parent / "data" / "storage-sop-classes.tsv"
EXPECTED_ROWS = 130


def parse_seed(text: str) -> list[tuple[str, str]]:
    """Return (uid, name) for every row of the table, in file order."""
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            uid, name, _annex = line.split("\t")
            rows.append((uid, name))
    return rows


SEED_SOP_CLASSES: list[tuple[str, str]] = parse_seed(SEED_FILE.read_text(encoding="utf-8"))
# A real check, not `assert`: it must also hold under `python -O`.
if len(SEED_SOP_CLASSES) != EXPECTED_ROWS:
    raise RuntimeError(f"{SEED_FILE}: {len(SEED_SOP_CLASSES)} rows, expected {EXPECTED_ROWS}")
