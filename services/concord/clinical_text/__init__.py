"""Clinical text → facts (issue 18): the narrative of pathology reports and notes, read into
the same ClinicalFact attribute keys the coded paths derive, with the text span, the
assertion status and a confidence. Pure: no broker, database or command line here."""
