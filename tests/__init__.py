"""Test suite and shared test infrastructure (import as ``tests.peers``, ``tests.dicomgen``)."""
