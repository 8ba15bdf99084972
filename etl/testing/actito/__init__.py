"""The Actito sandbox: a stateful HTTP server on loopback that behaves as docs/actito-wire.md says Actito does.

A mock of canned answers would hide what the client must survive (a 429 for the 6th concurrent request,
an upload whose answer never comes although the import was created), so the client's real HTTP stack
is exercised. Where docs/actito-wire.md leaves a choice open, the decision is made here *and* written
back there. Nothing here imports the rest of audience-sync: it is the other side of the wire."""
