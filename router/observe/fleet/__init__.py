"""The fleet view in PostgreSQL: its schema (`schema`), each node's mirror (`mirror`), and
the queries of `trace --fleet` and `queue --fleet` (`view`).

PostgreSQL is a mirror for seeing, never in the C-STORE path: files and queues stay on
the box that acknowledged the instance.
"""
