"""The rule file as Pydantic models: every key, default, validation and the JSON Schema."""
