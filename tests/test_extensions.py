"""Strawberry's SchemaExtensions run on our own transports: OpenTelemetry tracing sees every
step of a request and of a subscription, masking still holds, and an extension may supply
results or add to the response's `extensions`, over HTTP and over the websocket."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import websockets
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from tests.auth_flows import SIGNUP, login
from tests.chat_harness import PROTOCOL, WsClient, create_room, send
from tests.conftest import FakeClock, GraphQLClient, RecordingSms, new_number, running_app
from tests.live import serve

ME = "query Me { me { id usage { used limit } } }"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def tracing(provider: TracerProvider) -> Any:
    return lambda: OpenTelemetryExtension(tracer_provider=provider)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    names: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        names.setdefault(span.name, []).append(span)
    return names


def children_of(operation: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> set[str]:
    op = operation.context.span_id
    return {span.name for span in finished if span.parent is not None and span.parent.span_id == op}


async def test_a_request_is_traced_through_operation_parsing_validation_and_resolvers(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock, spans
) -> None:
    provider, exporter = spans
    app = create_app(base_settings, clock=clock, sms=sms, extensions=[tracing(provider)])
    async with running_app(app, base_settings) as http:
        gql = GraphQLClient(http)
        user = await login(gql, sms)
        exporter.clear()
        body = await gql(ME, token=user.token)
        assert body["data"]["me"]["usage"] == {"used": 0, "limit": 5}
        again = await gql(ME, token=user.token)  # a cached document is traced all the same
        assert again == body

    finished = exporter.get_finished_spans()
    names = by_name(finished)
    assert len(names["GraphQL Query: Me"]) == 2
    assert len(names["GraphQL Parsing"]) == 2 and len(names["GraphQL Validation"]) == 2
    # me has a resolver of its own; id, usage, used and limit are plain attributes, which
    # Strawberry's extension does not trace.
    assert len(names["GraphQL Resolving: me"]) == 2
    assert not [name for name in names if name.endswith(("usage", "used", "limit"))]
    operation = names["GraphQL Query: Me"][0]
    assert operation.attributes["query"] == ME
    assert {
        "GraphQL Parsing",
        "GraphQL Validation",
        "GraphQL Resolving: me",
    } <= children_of(operation, finished)
    resolving = names["GraphQL Resolving: me"][0]
    assert resolving.attributes["graphql.path"] == "me"


async def test_a_subscription_is_traced_and_streams_every_event(
    chat_settings: Settings, sms: RecordingSms, clock: FakeClock, worker, spans
) -> None:
    provider, exporter = spans
    app = create_app(chat_settings, clock=clock, sms=sms, extensions=[tracing(provider)])
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        gql = GraphQLClient(http)
        user = await login(gql, sms)
        room_id = await create_room(gql, user.token)
        sent = await send(gql, user.token, room_id, "Trace this")
        reply_id = sent["reply"]["id"]
        exporter.clear()
        async with WsClient.connect(url.replace("http://", "ws://") + "/graphql", user.token) as ws:
            result = await ws.collect(await ws.start(reply_id), timeout=30)
    assert result.completed and result.errors is None
    assert result.events[-1]["status"] == "COMPLETE" and result.text

    finished = exporter.get_finished_spans()
    names = by_name(finished)
    [operation] = [
        span for name, group in names.items() if name.startswith("GraphQL Query") for span in group
    ]
    assert {
        "GraphQL Parsing",
        "GraphQL Validation",
        "GraphQL Resolving: messageStream",
    } <= children_of(operation, finished)
    # The operation span lasts as long as the subscription: it ends after its last event.
    parsing = names["GraphQL Parsing"][0]
    assert operation.end_time is not None and operation.end_time > parsing.end_time


class Counting(SchemaExtension):
    """Counts resolver calls and reports what it saw in the response's `extensions`."""

    calls: list[str] = []

    def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        Counting.calls.append(info.field_name)
        return _next(root, info, *args, **kwargs)

    def get_results(self) -> dict[str, Any]:
        return {"seen": self.execution_context.operation_name}


async def test_an_extension_resolve_hook_wraps_every_event_of_a_subscription(
    chat_settings: Settings, sms: RecordingSms, clock: FakeClock, worker
) -> None:
    """The flat event renderer skips resolvers; with a resolve hook, events take graphql-core's
    general path, so the hook sees every field of every event."""
    Counting.calls = []
    app = create_app(chat_settings, clock=clock, sms=sms, extensions=[Counting])
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        gql = GraphQLClient(http)
        user = await login(gql, sms)
        body = await gql(ME, token=user.token)
        assert body["extensions"] == {"seen": "Me"}
        room_id = await create_room(gql, user.token)
        reply_id = (await send(gql, user.token, room_id, "Count"))["reply"]["id"]
        Counting.calls = []
        async with WsClient.connect(url.replace("http://", "ws://") + "/graphql", user.token) as ws:
            result = await ws.collect(await ws.start(reply_id), timeout=30)
    assert result.completed
    assert Counting.calls.count("messageStream") == len(result.events)
    assert Counting.calls.count("seq") == len(result.events)
    assert Counting.calls.count("delta") == len(result.events)


class Answering(SchemaExtension):
    """Answers `me`-less queries itself, as a response cache in on_execute would."""

    def on_execute(self) -> Iterator[None]:
        from graphql import ExecutionResult

        if self.execution_context.operation_name == "Canned":
            self.execution_context.result = ExecutionResult({"__typename": "Canned"}, None)
        yield


async def test_an_extension_may_answer_in_on_execute(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> None:
    app = create_app(base_settings, clock=clock, sms=sms, extensions=[Answering])
    async with running_app(app, base_settings) as http:
        body = (await http.post("/graphql", json={"query": "query Canned { __typename }"})).json()
        assert body == {"data": {"__typename": "Canned"}}
        body = (await http.post("/graphql", json={"query": "query Real { __typename }"})).json()
        assert body == {"data": {"__typename": "Query"}}


async def test_with_extensions_unexpected_errors_are_still_masked_and_request_errors_coded(
    base_settings: Settings,
    sms: RecordingSms,
    clock: FakeClock,
    spans,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, _ = spans
    broken = replace(
        base_settings, database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/no_such_db"
    )
    app = create_app(broken, clock=clock, sms=sms, extensions=[tracing(provider)])
    caplog.set_level(logging.ERROR, logger="gemini_graphql.errors")
    async with running_app(app, broken) as http:
        response = await http.post(
            "/graphql",
            json={"query": SIGNUP, "variables": {"input": {"mobileNumber": new_number()}}},
        )
        [error] = response.json()["errors"]
        assert error["message"] == "Internal server error."
        assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        assert any(
            error["extensions"]["requestId"] in r.getMessage() and r.exc_info
            for r in caplog.records
        )

        invalid = await http.post(
            "/graphql",
            json={"query": "{ nope }"},
            headers={"accept": "application/graphql-response+json"},
        )
        assert invalid.status_code == 400
        assert invalid.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
        assert "data" not in invalid.json()

        mutation_over_get = await http.get("/graphql", params={"query": SIGNUP})
        assert mutation_over_get.status_code == 405


async def test_a_mask_errors_extension_applies_on_both_transports(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> None:
    def unauthenticated(error: Any) -> bool:
        return (error.extensions or {}).get("code") == "UNAUTHENTICATED"

    masking = lambda: MaskErrors(should_mask_error=unauthenticated, error_message="Nope.")  # noqa: E731
    app = create_app(base_settings, clock=clock, sms=sms, extensions=[masking])
    async with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            body = (await http.post("/graphql", json={"query": ME})).json()
            assert [error["message"] for error in body["errors"]] == ["Nope."]
            gql = GraphQLClient(http)
            user = await login(gql, sms)
        async with websockets.connect(
            url.replace("http://", "ws://") + "/graphql", subprotocols=[PROTOCOL]
        ) as socket:
            await socket.send(
                json.dumps(
                    {
                        "type": "connection_init",
                        "payload": {"authorization": f"Bearer {user.token}"},
                    }
                )
            )
            assert json.loads(await socket.recv())["type"] == "connection_ack"
            await socket.send(
                json.dumps({"id": "1", "type": "subscribe", "payload": {"query": ME}})
            )
            message = json.loads(await socket.recv())
            assert (
                message["type"] == "next" and message["payload"]["data"]["me"]["id"] == user.user_id
            )
            assert json.loads(await socket.recv()) == {"id": "1", "type": "complete"}
            await socket.send(
                json.dumps({"id": "2", "type": "subscribe", "payload": {"query": "{ nope }"}})
            )
            refused = json.loads(await socket.recv())
            assert refused["type"] == "error" and refused["id"] == "2"
            assert refused["payload"][0]["extensions"]["code"] == "BAD_REQUEST"
