"""A local stand-in for BigQuery's REST API, enough for the real google-cloud-bigquery client to run a
query job and page through its result: jobs.insert, jobs.get, jobs.getQueryResults, jobs.cancel.

It is a contract double, not an emulator: it runs no SQL. A test says what the next query answers
(a schema and rows, or an error as BigQuery reports it) and reads back what the client sent (the SQL,
its query parameters) and which pages it asked for. Values are encoded as BigQuery's REST API encodes
them (every scalar a string, TIMESTAMP in microseconds when the client asks for int64 timestamps).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROJECT = "audience-project"


@dataclass
class Answer:
    """What the next query answers: ``fields`` as (name, BigQuery type); ``rows`` of REST-encoded values
    (None for NULL); or an error: (HTTP status, reason, message), raised by jobs.insert when ``at_insert``
    (how BigQuery refuses a call: 403 Access Denied), else reported as the finished job's errorResult
    (how it reports a query that fails: 400 invalidQuery, 404 notFound)."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    error: tuple[int, str, str] | None = None
    at_insert: bool = False
    #: the rows of a page whatever the client asks for (BigQuery sizes pages by bytes, too)
    page_rows: int | None = None


@dataclass
class _Job:
    resource: dict[str, Any]
    answer: Answer


class FakeBigQuery:
    """Serves on 127.0.0.1 (an ephemeral port) until ``close``; ``endpoint`` is the client's api_endpoint."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.queries: list[dict[str, Any]] = []  # the configuration.query of each jobs.insert
        self.pages: list[dict[str, str]] = []  # the query string of each getQueryResults asking for rows
        self.jobs: dict[str, _Job] = {}
        self.cancelled: list[str] = []  # the jobs.cancel calls' job ids
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _insert(self, project: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = self.answer
        query = body["configuration"]["query"]
        with self._lock:
            self.queries.append(query)
        if answer.error is not None and answer.at_insert:
            return _error(*answer.error)
        reference = {"projectId": project, "jobId": body["jobReference"]["jobId"], "location": "US"}
        status: dict[str, Any] = {"state": "DONE"}
        if answer.error is not None:
            code, reason, message = answer.error
            status["errorResult"] = {"reason": reason, "location": "query", "message": message}
            status["errors"] = [status["errorResult"]]
        destination = {"projectId": project, "datasetId": "_anonymous", "tableId": f"anon_{reference['jobId']}"}
        resource = {
            "kind": "bigquery#job", "id": f"{project}:US.{reference['jobId']}", "jobReference": reference,
            "configuration": {**body["configuration"], "query": {**query, "destinationTable": destination}},
            "status": status, "statistics": {"creationTime": "1768473000000", "query": {"statementType": "SELECT"}},
        }
        self.jobs[reference["jobId"]] = _Job(resource, answer)
        return 200, resource

    def _results(self, job_id: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        job = self.jobs[job_id]
        answer = job.answer
        size = int(params.get("maxResults", len(answer.rows) or 1))
        if answer.page_rows is not None and size > 0:
            size = answer.page_rows
        start = int(params.get("pageToken", params.get("startIndex", "0")))
        if size > 0:
            with self._lock:
                self.pages.append(params)
        end = start + size
        body: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse", "jobReference": job.resource["jobReference"],
            "jobComplete": True,
        }
        if not answer.fields:  # DDL or DML: BigQuery sends neither a schema nor totalRows
            return 200, body
        body["totalRows"] = str(len(answer.rows))
        body["schema"] = {"fields": [{"name": name, "type": type_, "mode": "NULLABLE"} for name, type_ in answer.fields]}
        if size > 0:
            body["rows"] = [{"f": [{"v": value} for value in row]} for row in answer.rows[start:end]]
            if end < len(answer.rows):
                body["pageToken"] = str(end)
        return 200, body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                parts, _ = self._parts()
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if parts[-1] == "jobs":
                    self._send(*fake._insert(parts[-2], body))
                elif parts[-1] == "cancel":
                    fake.cancelled.append(parts[-2])
                    self._send(200, {"kind": "bigquery#jobCancelResponse", "job": fake.jobs[parts[-2]].resource})
                else:
                    self._send(*_error(404, "notFound", f"no such call: POST {self.path}"))

            def do_GET(self) -> None:  # noqa: N802
                parts, params = self._parts()
                if parts[-2] == "queries":
                    self._send(*fake._results(parts[-1], params))
                elif parts[-2] == "jobs":
                    self._send(200, fake.jobs[parts[-1]].resource)
                else:
                    self._send(*_error(404, "notFound", f"no such call: GET {self.path}"))

            def _parts(self) -> tuple[list[str], dict[str, str]]:
                url = urllib.parse.urlsplit(self.path)
                return url.path.strip("/").split("/"), dict(urllib.parse.parse_qsl(url.query))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _error(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}
