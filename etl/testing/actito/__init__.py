"""The Actito sandbox: a real HTTP server on loopback that behaves as docs/actito-wire.md says Actito does.

Why it exists: no real Actito is reachable from development machines or CI, and a mock that returns
canned answers hides exactly what the client must survive — a 429 for the 6th concurrent request, an
upload whose answer never comes although the import was created, an exhausted daily quota, a file
refused for a BOM, a report naming rejected lines. So this is a stateful server on a real socket:
the client's real HTTP stack (connection pool, timeouts, streamed multipart bodies, retries) is what
gets exercised, and what an import did can be read back afterwards.

What it implements is docs/actito-wire.md, route for route; where that page left a choice open the
decision is made here *and* written back into that page (the client is written against the page).
Each module says the decisions that shape it; `server.ActitoSandbox` is where a test starts.

Nothing here imports the rest of audience-sync: the sandbox is the other side of the wire. It lives
in ``etl.testing`` because it is a test double: the runtime loads it only through
``etl.testing.in_process_actito_sandbox`` (for ``environment = "sandbox"``) and the ``sandbox``
command, never on a production run; it ships in the package because the README demo uses it.
"""
