"""A fake OpenTelemetry collector: OTLP/HTTP with protobuf bodies (what the [otel] extra's
exporter sends), `POST /v1/traces`. Keeps every span it is sent, decoded, with the
service.name of the process that sent it. Needs opentelemetry-proto (the exporter's).

`python -m uvicorn gemini_graphql.testing.fakes.otlp:app` serves one that only counts
(the benchmarks' sink).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # hex, as the SDK's format_trace_id
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # the OTLP enum: 2 SERVER, 3 CLIENT, 5 CONSUMER...
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]


@dataclass
class FakeCollector:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    keep: bool = True  # False: count requests only

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if request.headers.get("content-type") != PROTOBUF:
            return Response(status_code=415)
        self.requests += 1
        if self.keep:
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            self.spans.extend(_spans(export))
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)


def _spans(export: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        events=tuple((e.name, _attributes(e.attributes)) for e in span.events),
                    )
                )
    return received


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


app = FakeCollector(keep=False).app
