"""The spool: durable files, the delivery queue and the decision log (SQLite)."""
