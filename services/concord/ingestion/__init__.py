"""Ingestion: raw EHR events in; validated records with provenance, or dead letters, out."""
