"""Normalization: ingested records in; atomic facts keyed by enterprise patient id out."""
