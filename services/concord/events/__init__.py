"""Event contracts: pydantic twins of schemas/*.avsc and the Avro codec."""
