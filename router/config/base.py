"""The base of every rule-file model: strict (unknown keys are errors, with a did-you-mean)
and frozen; and the validation context through which fields see names defined elsewhere."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from router.errors import did_you_mean


def context(info: ValidationInfo, key: str) -> Any:
    """What `validation_context` found under `key` (destination or group names)."""
    return (info.context or {}).get(key, {})


class Strict(BaseModel):
    """Base of every rule-file model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys refused with a message of their own rather than "unknown key" (a key that
    # belongs to another kind of the same section, say).
    refused_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = {f.alias or n for n, f in cls.model_fields.items()}
            for key in data:
                if key not in allowed and key in cls.refused_keys:
                    raise PydanticCustomError(
                        "refused_key", "{message}", {"message": cls.refused_keys[key]}
                    )
                if key not in allowed:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'{hint}",
                        {"key": key, "hint": did_you_mean(str(key), allowed)},
                    )
        return data
