"""OpenTelemetry tracing (the [otel] extra): one trace from sendMessage through the arq job
to the worker's Gemini call, nothing users typed in any span, and nothing at all when the
OTEL_* variables do not ask for traces."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from arq.jobs import Job
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gemini_graphql.app.http_app import create_app
from gemini_graphql.chat.reply_queue import reply_job_id
from gemini_graphql.config import Settings
from gemini_graphql.infra import tracing
from gemini_graphql.infra.otel import HttpSpans, Tracing
from gemini_graphql.testing.fakes.gemini import API_KEY, FakeGemini, Script
from gemini_graphql.testing.fakes.otlp import FakeCollector
from gemini_graphql.testing.processes import settings_env, start_api, start_worker
from tests.auth_flows import login
from tests.chat_harness import (
    WsClient,
    create_room,
    running_worker,
    send,
    stream,
    user_with_room,
)
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve

CONTENT = "Plan 3 days in Kyoto, my secret itinerary"
# Inline, as README's walk-through writes it: the message is part of the document.
SEND_INLINE = """mutation Send { sendMessage(input: {chatroomId: "%s", content: "%s"}) {
  reply { id } errors { code message } } }"""


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


def parent_of(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


def recorded_text(spans: tuple[ReadableSpan, ...]) -> str:
    """Every attribute and event attribute value of every span, as one string."""
    values: list[Any] = []
    for span in spans:
        values += list((span.attributes or {}).values())
        for event in span.events:
            values += list((event.attributes or {}).values())
    return json.dumps(values, default=str)


async def finished_spans(
    exporter: InMemorySpanExporter, name: str, count: int = 1
) -> tuple[ReadableSpan, ...]:
    """The spans so far, once `count` spans called `name` have ended (the worker's job span
    ends just after the final event the client waited for)."""
    async with asyncio.timeout(15):
        while sum(span.name == name for span in exporter.get_finished_spans()) < count:
            await asyncio.sleep(0.02)
    return exporter.get_finished_spans()


async def test_one_trace_from_send_message_to_the_workers_gemini_call(
    chat_settings: Settings, sms: RecordingSms, clock: FakeClock, memory
) -> None:
    traced, exporter = memory
    app = create_app(chat_settings, clock=clock, sms=sms, tracing=traced)
    async with (
        running_worker(chat_settings, clock, tracing=traced),
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        gql = GraphQLClient(http)
        user = await login(gql, sms)
        room_id = await create_room(gql, user.token)
        body = await gql(SEND_INLINE % (room_id, CONTENT), token=user.token)
        sent = body["data"]["sendMessage"]
        assert sent["errors"] == []
        ws_url = url.replace("http://", "ws://") + "/graphql"
        async with WsClient.connect(ws_url, user.token) as ws:
            result = await ws.collect(await ws.start(sent["reply"]["id"]), timeout=30)
        assert result.completed and result.events[-1]["status"] == "COMPLETE"
        assert CONTENT in result.text  # the fake Gemini echoes the message
        spans = await finished_spans(exporter, "generate_reply")

    mutation = named(spans, "GraphQL Query: Send")
    job = named(spans, "generate_reply")
    waited = named(spans, "queue wait")
    gemini = named(spans, f"chat {chat_settings.gemini_model}")
    request = parent_of(mutation, spans)
    assert request is not None and request.kind is SpanKind.SERVER
    assert request.name == "POST /graphql"
    assert request.attributes["http.route"] == "/graphql"
    assert request.attributes["http.response.status_code"] == 200

    # One trace: request → mutation → (queue wait, job) → Gemini.
    assert {span.context.trace_id for span in (request, mutation, job, gemini)} == {
        request.context.trace_id
    }
    assert parent_of(waited, spans) is mutation and parent_of(job, spans) is mutation
    assert parent_of(gemini, spans) is job
    assert job.kind is SpanKind.CONSUMER and gemini.kind is SpanKind.CLIENT
    assert waited.start_time <= job.start_time and waited.end_time <= job.start_time
    assert job.attributes["queue.wait_ms"] >= 0 and job.attributes["job.try"] == 1
    assert job.attributes["job.outcome"] == "complete"
    assert [event.name for event in job.events] == ["final event"]
    assert job.events[0].timestamp >= gemini.end_time
    assert [event.name for event in gemini.events] == ["first delta"]
    assert gemini.start_time <= gemini.events[0].timestamp <= gemini.end_time
    assert gemini.attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert gemini.attributes["gemini_graphql.model.ended"] == "complete"
    assert gemini.attributes["gen_ai.usage.output_tokens"] > 0
    assert gemini.attributes["gen_ai.response.id"].startswith("fake-response-")

    # The document is recorded without its string literals; no arguments, no text.
    document = mutation.attributes["graphql.document"]
    assert 'content: "?"' in document and "sendMessage" in document
    assert mutation.attributes["graphql.operation.type"] == "mutation"
    # No span per resolver (Strawberry's stock extension makes one, with its arguments).
    assert not [span.name for span in spans if span.name.startswith("GraphQL Resolving")]
    recorded = recorded_text(spans)
    for secret in (
        CONTENT,
        "Kyoto",
        result.text.strip(),
        user.number,
        user.number.lstrip("+"),
        user.token,
        chat_settings.secret_key,
        API_KEY,
    ):
        assert secret not in recorded


async def test_the_real_processes_export_one_trace_over_otlp(
    chat_settings: Settings, redis_client, make_client, sms: RecordingSms
) -> None:
    """`serve` and `worker` as deployed, configured by OTEL_* alone, exporting over OTLP/HTTP
    to a collector: the api's and the worker's spans make one trace."""
    collector = FakeCollector()
    async with serve(collector.app) as collector_url:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export soon, not every 5 s
        }
        api, url = await start_api(chat_settings, env=env)
        worker = await start_worker(chat_settings, redis_client, env=env)
        try:
            local = GraphQLClient(await make_client())  # codes come back by SMS here
            user, room_id = await user_with_room(local, sms)
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                sent = await send(GraphQLClient(http), user.token, room_id, CONTENT)
            assert sent["errors"] == []
            async with asyncio.timeout(20):
                while not any(span.name == "generate_reply" for span in collector.spans):
                    await asyncio.sleep(0.05)
        finally:
            await worker.stop()
            await api.stop()
    spans = {span.name: span for span in collector.spans}
    mutation = next(span for name, span in spans.items() if name.startswith("GraphQL Query"))
    job, gemini = spans["generate_reply"], spans[f"chat {chat_settings.gemini_model}"]
    assert mutation.service == "gemini-graphql-api"
    assert job.service == gemini.service == "gemini-graphql-worker"
    assert mutation.trace_id == job.trace_id == gemini.trace_id
    assert gemini.parent_span_id == job.span_id
    assert spans["POST /graphql"].span_id == mutation.parent_span_id
    assert job.parent_span_id == mutation.span_id
    assert CONTENT not in json.dumps([(s.attributes, s.events) for s in collector.spans])


async def test_jobs_with_or_without_a_carrier_run_on_traced_and_untraced_workers(
    chat_settings: Settings, sms: RecordingSms, clock: FakeClock, redis_client, memory, live
) -> None:
    """A job queued without a carrier (the stranded-reply sweep's, or the api's when it does
    not trace) gets a root span on a traced worker; an untraced worker runs carried ones."""
    traced, exporter = memory
    user, room_id = await user_with_room(live.http, sms)  # `live`: an untraced api
    sent = await send(live.http, user.token, room_id)
    job = Job(
        reply_job_id(chat_settings.redis_names, uuid.UUID(sent["reply"]["id"])),
        redis_client,
        _queue_name=chat_settings.redis_names.arq_queue,
    )
    info = await job.info()
    assert info is not None and info.kwargs == {}  # no carrier when the api does not trace
    async with running_worker(chat_settings, clock, tracing=traced):
        result = await stream(live.ws_url, user.token, sent["reply"]["id"])
        spans = await finished_spans(exporter, "generate_reply")
    assert result.completed
    root = named(spans, "generate_reply")
    assert root.parent is None
    assert parent_of(named(spans, f"chat {chat_settings.gemini_model}"), spans) is root

    # And the other way round: a traced api's job on a worker that does not trace.
    app = create_app(chat_settings, clock=clock, sms=sms, tracing=traced)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        again = await send(GraphQLClient(http), user.token, room_id, "and again")
        reply_id = uuid.UUID(again["reply"]["id"])
        carried = await Job(
            reply_job_id(chat_settings.redis_names, reply_id),
            redis_client,
            _queue_name=chat_settings.redis_names.arq_queue,
        ).info()
        assert carried is not None and carried.kwargs["trace"]["traceparent"].startswith("00-")
        async with running_worker(chat_settings, clock):
            ws_url = url.replace("http://", "ws://") + "/graphql"
            done = await stream(ws_url, user.token, str(reply_id))
    assert done.completed and done.events[-1]["status"] == "COMPLETE"


async def test_off_without_otel_variables_nothing_of_opentelemetry_is_loaded(
    base_settings: Settings,
) -> None:
    """The entry point, with no OTEL_* variable: no tracing, and not even the SDK imported
    (so no extension on the schema and no middleware either)."""
    env = {
        **settings_env(base_settings),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",  # says how, not that: still off
    }
    probe = (
        "import sys, gemini_graphql.app.asgi as asgi; "
        "from gemini_graphql.infra.tracing import from_env, API_SERVICE; "
        "assert from_env(service=API_SERVICE) is None; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry') "
        "or m.endswith(('.otel', 'transport.tracing', 'ai.traced'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"

    plain = create_app(base_settings, tracing=tracing.from_env({}, service="x"))
    assert not [m for m in plain.user_middleware if m.cls is HttpSpans]
    assert len(plain.user_middleware) == len(create_app(base_settings).user_middleware)


HIDE_OPENTELEMETRY = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _NotInstalled())
"""


async def test_asked_for_but_not_installed_it_says_how_and_serves_untraced(
    base_settings: Settings, tmp_path
) -> None:
    """The default image (no [otel] extra) given OTEL_* variables: one warning, no tracing."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_OPENTELEMETRY)
    env = {
        **settings_env(base_settings),
        "PYTHONPATH": str(tmp_path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
    }
    probe = (
        "import gemini_graphql.app.asgi as asgi; "
        "from gemini_graphql.infra.tracing import from_env; "
        "assert from_env(service='x') is None"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "OpenTelemetry is not installed: pip install 'gemini-graphql[otel]'" in run.stderr


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "api"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, ()),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, ()),  # not shipped: warned and ignored
        ({"OTEL_TRACES_EXPORTER": " ", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, ("otlp",)),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, ()),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}, ()),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, ("console",)),
    ],
)
def test_which_exporters_the_variables_ask_for(environ: dict[str, str], wanted: tuple) -> None:
    assert tracing.exporters(environ) == wanted


def test_the_rest_of_the_standard_variables() -> None:
    assert tracing.service_name({}, tracing.WORKER_SERVICE) == "gemini-graphql-worker"
    assert tracing.service_name({"OTEL_SERVICE_NAME": "chat-api"}, "x") == "chat-api"
    assert tracing.otlp_protocol({}) == "http/protobuf"
    both = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert tracing.otlp_protocol(both) == "http/protobuf"
    # Disabled wins over everything; an unsupported protocol turns tracing off (logged).
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    assert tracing.from_env(disabled, service="x") is None
    json_protocol = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    assert tracing.from_env(json_protocol, service="x") is None


async def test_a_failing_model_call_is_an_error_span_by_type_only(
    chat_settings: Settings, fake_gemini: tuple[FakeGemini, str], sms, clock, memory, live
) -> None:
    """Gemini refusing (400): the model span is an error, named by its type (no message)."""
    fake, _ = fake_gemini
    fake.script(Script(status=400))
    traced, exporter = memory
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(chat_settings, clock, tracing=traced):
        sent = await send(live.http, user.token, room_id)
        result = await stream(live.ws_url, user.token, sent["reply"]["id"])
        spans = await finished_spans(exporter, "generate_reply")
    assert result.events[-1]["status"] == "FAILED"
    gemini = named(spans, f"chat {chat_settings.gemini_model}")
    assert gemini.status.status_code.name == "ERROR"
    assert gemini.attributes["error.type"].endswith("ModelError")
    assert gemini.attributes["gemini_graphql.model.ended"] == "error"
    assert named(spans, "generate_reply").attributes["job.outcome"] == "failed"


async def test_a_retried_job_runs_again_in_the_same_trace(
    chat_settings: Settings, fake_gemini: tuple[FakeGemini, str], sms, clock, memory
) -> None:
    """Gemini's 503, then an answer: arq runs the job again with the same kwargs, so both
    tries are children of the mutation, the first marked a retry."""
    fake, _ = fake_gemini
    fake.script(Script(status=503))
    traced, exporter = memory
    app = create_app(chat_settings, clock=clock, sms=sms, tracing=traced)
    async with (
        running_worker(chat_settings, clock, tracing=traced),
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        gql = GraphQLClient(http)
        user, room_id = await user_with_room(gql, sms)
        sent = await send(gql, user.token, room_id)
        ws_url = url.replace("http://", "ws://") + "/graphql"
        result = await stream(ws_url, user.token, sent["reply"]["id"])
        spans = await finished_spans(exporter, "generate_reply", count=2)
    assert result.events[-1]["status"] == "COMPLETE"
    first, second = sorted(
        (span for span in spans if span.name == "generate_reply"),
        key=lambda span: span.attributes["job.try"],
    )
    assert (first.attributes["job.try"], second.attributes["job.try"]) == (1, 2)
    assert first.attributes["job.outcome"] == "retry"
    assert second.attributes["job.outcome"] == "complete"
    mutation = parent_of(first, spans)
    assert mutation is not None and "sendMessage" in mutation.attributes["graphql.document"]
    assert parent_of(second, spans) is mutation
    calls = [span for span in spans if span.name.startswith("chat ")]
    assert sorted(span.attributes["gemini_graphql.model.ended"] for span in calls) == [
        "complete",
        "error",
    ]


async def test_a_subscription_stopped_by_its_client_ends_its_span(
    base_settings: Settings, sms: RecordingSms, memory
) -> None:
    """Every subscription ends by cancellation (the client's `complete`, or a disconnect):
    its operation span must end then too, not wait for the garbage collector."""
    traced, exporter = memory
    app = create_app(base_settings, sms=sms, tracing=traced)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        gql = GraphQLClient(http)
        user = await login(gql, sms)
        ws_url = url.replace("http://", "ws://") + "/graphql"
        async with WsClient.connect(ws_url, user.token) as ws:
            subscribe = {
                "id": "events",
                "type": "subscribe",
                "payload": {"query": "subscription Watch { chatroomEvents { type } }"},
            }
            await ws.socket.send(json.dumps(subscribe))
            await asyncio.sleep(0.3)  # running, waiting for events
            await ws.stop("events")
            # (Strawberry's extension names every operation's span "GraphQL Query: <name>".)
            spans = await finished_spans(exporter, "GraphQL Query: Watch")
    span = named(spans, "GraphQL Query: Watch")
    assert span.end_time is not None
    assert user.token not in recorded_text(spans)
