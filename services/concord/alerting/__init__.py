"""Alerting: conflict events in; alerts in PostgreSQL and on concord.alerts out."""
