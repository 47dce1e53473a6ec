"""Strawberry's OpenTelemetryExtension as the api runs it when tracing is on (infra.tracing):
its operation, parsing and validation spans, without what users typed, and no span per
resolver.

Stock, it records the document as sent, literals included, and every resolver's arguments
(`sendMessage`'s content, `signup`'s mobile number). Here the document is recorded only
once parsed, its string literals replaced by "?" (a message written inline stays out too),
and a document that does not parse is not recorded.

Its resolver spans cost most of what tracing costs: hooking `resolve` sends every field
through graphql-core's middleware, as a coroutine (`me` served at half the rate again, on
top of what any extension costs; bench/tracing_overhead.py). Instead the operation's span
is the current span while the operation runs, so what a resolver does under it (queueing a
reply, with its trace context) is its child. Imported only when tracing is on: it imports
the OpenTelemetry API.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import suppress
from functools import partial
from typing import Any

from graphql import DocumentNode, StringValueNode, Visitor, print_ast, visit
from opentelemetry import context as otel_context
from opentelemetry.trace import TracerProvider, set_span_in_context
from strawberry.extensions import SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension

from gemini_graphql.api.transport.strawberry_seams import operation_span

_PRINTED_CACHE = 1000  # distinct documents; inline literals make each message's its own
_printed: dict[str, str] = {}


class PrivateOpenTelemetry(OpenTelemetryExtension):
    resolve = SchemaExtension.resolve  # not hooked: no span per resolver (see above)

    def __init__(self, *, execution_context: Any = None, tracer_provider: TracerProvider) -> None:
        super().__init__(execution_context=execution_context, tracer_provider=tracer_provider)

    def on_operation(self) -> Generator[None, None, None]:
        context = self.execution_context
        stock = super().on_operation()
        query, context.query = context.query, None  # the stock span records it as typed
        try:
            next(stock)  # the operation's span starts
        finally:
            context.query = query
        span = operation_span(self)
        current = otel_context.attach(set_span_in_context(span))
        try:
            yield
        finally:
            # Also when the operation raised or was cancelled (every subscription ends so):
            # the span ends either way.
            otel_context.detach(current)
            document = context.graphql_document
            if document is not None and query:
                span.set_attribute("graphql.document", _without_strings(query, document))
                operation = context.operation_name
                if operation:
                    span.set_attribute("graphql.operation.name", operation)
                with suppress(RuntimeError):  # no operation of that name: its error says so
                    span.set_attribute("graphql.operation.type", context.operation_type.value)
            next(stock, None)  # ... and ends


def extensions(provider: TracerProvider) -> list[Callable[[], SchemaExtension]]:
    """The extension list create_app puts first on the schema."""
    return [partial(PrivateOpenTelemetry, tracer_provider=provider)]


class _Strings(Visitor):
    def enter_string_value(self, node: StringValueNode, *_: Any) -> StringValueNode:
        return StringValueNode(value="?")


def _without_strings(query: str, document: DocumentNode) -> str:
    printed = _printed.get(query)
    if printed is None:
        printed = print_ast(visit(document, _Strings()))
        if len(_printed) < _PRINTED_CACHE:
            _printed[query] = printed
    return printed
