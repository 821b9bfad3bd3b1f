"""Conflicts: facts in; conflict lifecycle events out. State of record in PostgreSQL."""
