"""Logs, Prometheus metrics and the HTTP endpoint."""
