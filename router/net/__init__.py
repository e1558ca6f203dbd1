"""The network layer: pynetdicom's changes, TLS and admission of callers."""
