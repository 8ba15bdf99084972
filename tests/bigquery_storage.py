"""A local stand-in for the BigQuery Storage Read API's gRPC service (CreateReadSession, ReadRows), for
the real BigQueryReadClient over an insecure channel to 127.0.0.1.

A contract double: a test hands it Arrow record batches per stream; the session and each ReadRows
message carry them serialized as BigQuery sends them (the schema, then one record batch per message).
It records the sessions asked for and how many messages each stream sent before it ended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pyarrow as pa
from google.cloud.bigquery_storage_v1 import BigQueryReadClient, types
from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

SERVICE = "google.cloud.bigquery.storage.v1.BigQueryRead"


class FakeStorage:
    def __init__(self, schema: pa.Schema, streams: list[list[pa.RecordBatch]]) -> None:
        self.schema = schema
        self.streams = streams
        self.sessions: list[Any] = []  # the CreateReadSessionRequests
        self.sent = [0 for _ in streams]  # messages sent per stream
        self.ended = threading.Event()  # every ReadRows call over, read to the end or cancelled
        self._open = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "CreateReadSession": grpc.unary_unary_rpc_method_handler(
                self._create, request_deserializer=types.CreateReadSessionRequest.deserialize,
                response_serializer=types.ReadSession.serialize),
            "ReadRows": grpc.unary_stream_rpc_method_handler(
                self._read, request_deserializer=types.ReadRowsRequest.deserialize,
                response_serializer=types.ReadRowsResponse.serialize),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self._port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._channels: list[grpc.Channel] = []

    def client(self) -> BigQueryReadClient:
        """The real client, its transport on a plain channel to this server (no credentials asked for)."""
        channel = grpc.insecure_channel(f"127.0.0.1:{self._port}")
        self._channels.append(channel)
        return BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._server.stop(grace=None)

    def _serialized_schema(self) -> Any:
        return types.ArrowSchema(serialized_schema=self.schema.serialize().to_pybytes())

    def _create(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.sessions.append(request)
        name = "projects/p/locations/us/sessions/s"
        return types.ReadSession(
            name=name, data_format=types.DataFormat.ARROW, arrow_schema=self._serialized_schema(),
            streams=[types.ReadStream(name=f"{name}/streams/{index}") for index in range(len(self.streams))])

    def _read(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        index = int(request.read_stream.rsplit("/", 1)[1])
        with self._lock:
            self._open += 1
        context.add_callback(self._finished)
        for batch in self.streams[index]:  # a resumed read (offset) is not served
            if not context.is_active():
                return
            self.sent[index] += 1
            yield types.ReadRowsResponse(
                arrow_record_batch=types.ArrowRecordBatch(serialized_record_batch=batch.serialize().to_pybytes(),
                                                          row_count=batch.num_rows),
                row_count=batch.num_rows, arrow_schema=self._serialized_schema())

    def _finished(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self.ended.set()
