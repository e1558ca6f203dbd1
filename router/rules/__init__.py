"""From a rule file to decisions: loading, the pure engine, lint and fixtures."""
