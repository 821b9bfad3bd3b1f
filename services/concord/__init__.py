"""Concord: tells clinical data teams when two EHR sources disagree about a patient."""

__version__ = "0.1.0"
