"""The published JSON Schema is the one the models generate."""

from __future__ import annotations

import json
from pathlib import Path

from router.cli import main

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "rule-file.schema.json"


def test_published_schema_matches_the_models(capsys: object) -> None:
    """docs/rule-file.schema.json is what `dicom-router schema` prints (regenerate it if not)."""
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert printed == json.loads(SCHEMA.read_text())
