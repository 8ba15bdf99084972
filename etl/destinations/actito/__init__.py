"""Actito: the HTTP client, bulk imports, mapping and checks (the sandbox that stands in for Actito is etl.testing)."""
