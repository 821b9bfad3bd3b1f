"""`concord generate`: a synthetic population written as FHIR R4 and HL7 v2 files from several
sources, with realistic duplicates, look-alikes that are different people, and an answer key.
See docs/generate.md."""

from concord.generate.config import GeneratorConfig, SourceSpec, parse_sources
from concord.generate.generator import GeneratedSet, generate, write

__all__ = ["GeneratedSet", "GeneratorConfig", "SourceSpec", "generate", "parse_sources", "write"]
