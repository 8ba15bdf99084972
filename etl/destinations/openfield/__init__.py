"""OpenField: profiles pushed one by one to its webservice, as Qualifio does (see docs/openfield-wire.md)."""
