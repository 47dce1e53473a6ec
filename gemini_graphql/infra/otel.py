"""Tracing when it is on (see infra.tracing for when): the tracer provider, and the spans our
own code adds to Strawberry's.

One reply is one trace across processes: the HTTP request and the GraphQL operation in the
api, the trace context (W3C `traceparent`) carried in the arq job's kwargs, then in the
worker the time the job waited in the queue, the job, and the model call with its first
delta; the job records when the reply finished (its final event was published just before
the job function returned).

Spans carry no user data: no message or reply text, no phone numbers, no tokens, no query
strings or headers, and exceptions by their type only (messages may quote values).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from arq import Retry
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JobFunction = Callable[..., Awaitable[Any]]

INSTRUMENTATION = "gemini_graphql"


class Tracing:
    """This process's spans go to `provider` (tests pass one with an in-memory exporter)."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)

    @classmethod
    def configured(cls, exporters: Collection[str], *, protocol: str, service: str) -> Tracing:
        """A provider batching to the exporters named ("otlp", "console"); the exporter reads
        its endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*. Under
        `opentelemetry-instrument`, whose provider is already set, that one is used."""
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            return cls(current)
        # The sampler (OTEL_TRACES_SAMPLER) and OTEL_RESOURCE_ATTRIBUTES are read here.
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        for name in exporters:
            exporter = ConsoleSpanExporter() if name == "console" else _otlp_exporter(protocol)
            provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* apply
        trace.set_tracer_provider(provider)  # for any library that traces on its own
        return cls(provider)

    def inject(self) -> dict[str, str] | None:
        """The current trace context as a carrier for a job's kwargs; None outside a span."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    @contextmanager
    def job_span(
        self,
        name: str,
        carrier: Mapping[str, str] | None,
        *,
        job_id: str | None = None,
        attempt: int | None = None,
        runnable_ms: int | None = None,
    ) -> Iterator[Span]:
        """A job's span, a child of the context its enqueuer injected (a root span without
        one), after a "queue wait" span from when it became runnable (`runnable_ms`, arq's
        score: its enqueue time, or a retry's due time) to now. Current while it runs."""
        parent = propagate.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {
            "messaging.system": "arq",
            "messaging.operation.type": "process",
        }
        if job_id is not None:
            attributes["messaging.message.id"] = job_id
        if attempt is not None:
            attributes["job.try"] = attempt
        if runnable_ms is not None:
            now_ns = time.time_ns()
            start_ns = min(now_ns, runnable_ms * 1_000_000)  # another host's clock may be ahead
            attributes["queue.wait_ms"] = round((now_ns - start_ns) / 1e6, 1)
            waited = self.tracer.start_span(
                "queue wait", context=parent, kind=SpanKind.INTERNAL, start_time=start_ns
            )
            waited.end(end_time=now_ns)
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Retry:
                span.set_attribute("job.outcome", "retry")
                raise
            except BaseException as exc:
                failed(span, exc)
                raise

    def job(
        self, function: JobFunction, *, name: str, finished: Collection[str] = ()
    ) -> JobFunction:
        """`function` (an arq job) run in its job_span, with the carrier taken from its
        `trace` kwarg; a result in `finished` adds the "final event" event."""

        @functools.wraps(function)
        async def traced(
            ctx: dict[str, Any], *args: Any, trace: dict[str, str] | None = None, **kwargs: Any
        ) -> Any:
            with self.job_span(
                name,
                trace,
                job_id=ctx.get("job_id"),
                attempt=ctx.get("job_try"),
                runnable_ms=ctx.get("score"),
            ) as span:
                result = await function(ctx, *args, **kwargs)
                if isinstance(result, str):
                    span.set_attribute("job.outcome", result)
                    if result in finished:
                        span.add_event("final event", {"reply.status": result})
                return result

        return traced

    def model_span(self, *, provider: str, model: str) -> Span:
        """A model call's span (GenAI conventions, no prompt or output), a child of the
        current span; the caller ends it (see ai.traced)."""
        return self.tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
            },
        )

    def shutdown(self) -> None:
        """Export what is still batched (the provider also does this at exit)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def failed(span: Span, exc: BaseException) -> None:
    """The span ended by `exc`: its type only, never its message (which may quote values)."""
    kind = type(exc)
    span.set_status(StatusCode.ERROR, kind.__name__)
    span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")


class HttpSpans:
    """ASGI middleware: a SERVER span per HTTP request, continuing a `traceparent` the
    client or a proxy sent. Method, path, route and status only: the query string (a GET's
    GraphQL document and variables) and the headers (the bearer token) stay out. Websockets
    pass straight through: their operations get Strawberry's spans, and a span per
    connection or per frame would cost on every delta for little."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self._tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        with self._tracer.start_as_current_span(
            method,
            context=_remote_parent(scope["headers"]),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            async def send_status(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                failed(span, exc)
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)  # Starlette's matched route
                if route:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")


def _remote_parent(headers: list[tuple[bytes, bytes]]) -> Context | None:
    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in (b"traceparent", b"tracestate")
    }
    return propagate.extract(carrier) if carrier else None


def _otlp_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()
