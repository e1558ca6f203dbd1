"""The published JSON Schema is the one the models generate, and it explains every key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.cli import main
from router.config.model import Config

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "rule-file.schema.json"


def test_published_schema_matches_the_models(capsys: object) -> None:
    """docs/rule-file.schema.json is what `dicom-router schema` prints (regenerate it if not)."""
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert printed == json.loads(SCHEMA.read_text())


def _undescribed(schema: dict[str, Any]) -> list[str]:
    """`Definition.key` for every property of the root and of every definition without one."""
    objects = {"(root)": schema, **schema.get("$defs", {})}
    return [
        f"{name}.{key}"
        for name, body in objects.items()
        for key, prop in body.get("properties", {}).items()
        if not prop.get("description")
    ]


def test_every_key_of_the_rule_file_has_a_description() -> None:
    """Each property of each model has a description, shown by editors completing the file."""
    schema = Config.model_json_schema(by_alias=True)
    assert len(schema["$defs"]) > 20  # the walk sees the whole tree
    assert _undescribed(schema) == []


def test_a_key_without_a_description_is_found() -> None:
    """The walk above reports a property that lacks a description (so the test can fail)."""
    schema = {
        "properties": {"a": {"type": "string", "description": "A."}},
        "$defs": {"Thing": {"properties": {"b": {"type": "integer"}}}},
    }
    assert _undescribed(schema) == ["Thing.b"]
