"""fakesnow's HTTP server for tests/test_snowflake.py, run as ``python fakesnow_server.py PORT`` by the
Python of ``.venv-fakesnow`` (not the project's venv: fakesnow imports connector-4 modules that
connector 5, which snowflake-sqlalchemy 2.1 needs, no longer has).

Two corrections to fakesnow 0.12, where connector 5 is stricter than 4 and follows Snowflake:
its login answer lacks the master token and validity fields ("Missing response field: master
token"), filled in here unchecked; and a NULL timestamp is sent as a struct whose children hold
the NULLs, unmasked ("Found unmasked nulls for non-nullable StructArray field"), masked here.
Everything else (the query protocol, Arrow result chunks, errors) is fakesnow's own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import fakesnow.arrow as fake_arrow
import fakesnow.server as fake
import pyarrow as pa
import pyarrow.compute as pc
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_login = fake.login_request
_timestamp_struct = fake_arrow.timestamp_to_sf_struct


def masked_timestamp_struct(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
    struct = _timestamp_struct(ts)
    if not struct.null_count and not any(child.null_count for child in struct.flatten()):
        return struct
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    children = [pc.fill_null(child, 0) for child in struct.flatten()]
    return pa.StructArray.from_arrays(children, fields=list(struct.type), mask=ts.is_null())


async def login_with_master_token(request: Request) -> Any:
    response = await _login(request)
    body = json.loads(bytes(response.body))
    data = body.get("data") or {}
    if body.get("success") and "token" in data:
        data.setdefault("masterToken", f"master-{data['token']}")
        data.setdefault("validityInSeconds", 3600)
        data.setdefault("masterValidityInSeconds", 14400)
        data.setdefault("sessionId", 1)
    return JSONResponse(body, status_code=response.status_code)


def main(port: int) -> None:
    routes = [
        Route(route.path, login_with_master_token, methods=["POST"])
        if isinstance(route, Route) and route.endpoint is _login else route
        for route in fake.app.routes
    ]
    fake.app.router.routes[:] = routes
    fake_arrow.timestamp_to_sf_struct = masked_timestamp_struct
    uvicorn.run(fake.app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]))
