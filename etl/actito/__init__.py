"""Actito: the HTTP client, bulk imports, and the sandbox that stands in for Actito in tests and the demo."""
