"""Ingested records → atomic clinical facts, pure: one module per raw format."""
