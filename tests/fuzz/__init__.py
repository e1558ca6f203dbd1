"""The fuzz suite: mutated PDUs and datasets against the real daemon (docs/security.md)."""
