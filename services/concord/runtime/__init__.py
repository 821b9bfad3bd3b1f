"""Adapters every service shares: the batch loop, the Faust worker shell, PostgreSQL."""
