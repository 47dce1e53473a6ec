"""Prometheus metrics: scraped from /metrics after real journeys (a live api, an arq worker
and the fake Gemini through the SDK), the counters moved by exactly what happened; label
values stay bounded; the endpoint is guarded in production; `serve --workers 2` sums its
processes; the worker serves its own on METRICS_PORT."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import AppEnv, Settings
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script
from gemini_graphql.testing.processes import free_port, start_api, start_worker
from tests.auth_flows import login
from tests.chat_harness import Live, WsClient, create_room
from tests.conftest import GraphQLClient, RecordingSms
from tests.live import serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

ME = "query MetricsMe { me { id tier } }"
SEND = """mutation MetricsSend($input: SendMessageInput!) {
  sendMessage(input: $input) {
    reply { id } errors { code }
  }
}"""
REPLY_TOKENS = """query MetricsReply($id: ID!) {
  chatroom(id: $id) { messages(last: 1) { edges { node { status tokenUsage { promptTokens outputTokens totalTokens } } } } }
}"""


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def scrape(http: httpx.AsyncClient, path: str = "/metrics", **kwargs: Any) -> Samples:
    response = await http.get(path, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def base_url(live: Live) -> str:
    return live.ws_url.removesuffix("/graphql").replace("ws://", "http://")


async def wait_for(check: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_journey_moves_the_counters_by_exactly_what_happened(
    live: Live, worker: Any, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str]
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=["Metrics ", "are ", "counted."]))
    gql = live.http
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    async with httpx.AsyncClient(base_url=base_url(live), timeout=30) as http:
        before = await scrape(http)
        query = {"operation_type": "query", "operation_name": "MetricsMe"}
        for _ in range(3):  # the first is computed, the next two come from the response cache
            body = await gql(ME, token=user.token)
            assert body["data"]["me"]["tier"] == "BASIC"
        await gql("query MetricsUnknownField { nope }", expect_status=200)  # BAD_REQUEST
        assert (await gql(ME))["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        missing = await gql(
            SEND,
            {"input": {"chatroomId": "00000000-0000-0000-0000-000000000000", "content": "x"}},
            token=user.token,
        )
        assert [e["code"] for e in missing["data"]["sendMessage"]["errors"]] == ["NOT_FOUND"]

        sent = await gql(
            SEND, {"input": {"chatroomId": room_id, "content": "hi"}}, token=user.token
        )
        reply_id = sent["data"]["sendMessage"]["reply"]["id"]
        async with WsClient.connect(live.ws_url, user.token) as client:
            during = await scrape(http)
            assert moved(before, during, "gemini_graphql_websockets_open") == 1
            op_id = await client.start(reply_id)
            result = await client.collect(op_id)
        assert result.completed and result.text == "Metrics are counted."

        async def settled() -> bool:
            now = await scrape(http)
            return (
                moved(before, now, "gemini_graphql_jobs_finished_total", outcome="completed") == 1
                and moved(before, now, "gemini_graphql_websockets_open") == 0
            )

        await wait_for(settled)
        after = await scrape(http)

    # Operations, by type and name; durations observed for each query and mutation.
    assert moved(before, after, "gemini_graphql_operations_total", **query) == 4  # 3 + anonymous
    assert moved(before, after, "gemini_graphql_operation_duration_seconds_count", **query) == 4
    send_labels = {"operation_type": "mutation", "operation_name": "MetricsSend"}
    assert moved(before, after, "gemini_graphql_operations_total", **send_labels) == 2
    stream_labels = {"operation_type": "subscription", "operation_name": "_anonymous"}
    assert moved(before, after, "gemini_graphql_operations_total", **stream_labels) == 1
    bad = {"operation_type": "unknown", "operation_name": "_invalid"}  # it did not validate
    assert moved(before, after, "gemini_graphql_operations_total", **bad) == 1
    # Errors, top level and in payloads.
    errors = "gemini_graphql_errors_total"
    assert moved(before, after, errors, code="BAD_REQUEST", kind="response") == 1
    assert moved(before, after, errors, code="UNAUTHENTICATED", kind="response") == 1
    assert moved(before, after, errors, code="NOT_FOUND", kind="payload") == 1
    # The response cache: one miss, then two hits (the unauthenticated `me` never looks).
    lookups = "gemini_graphql_cache_lookups_total"
    assert moved(before, after, lookups, cache="response", result="miss") == 1
    assert moved(before, after, lookups, cache="response", result="hit") == 2
    # The subscription: every event it was sent, and no longer active.
    events = moved(before, after, "gemini_graphql_subscription_events_total", field="messageStream")
    assert events == len(result.events)
    assert moved(before, after, "gemini_graphql_subscriptions_active", field="messageStream") == 0
    # The worker: one job, one Gemini call, one first chunk, the reply's tokens.
    assert moved(before, after, "gemini_graphql_jobs_started_total") == 1
    for outcome in ("failed", "stopped", "retried", "error", "skipped"):
        assert moved(before, after, "gemini_graphql_jobs_finished_total", outcome=outcome) == 0
    assert moved(before, after, "gemini_graphql_gemini_call_duration_seconds_count") == 1
    assert moved(before, after, "gemini_graphql_reply_first_chunk_seconds_count") == 1
    body = await gql(REPLY_TOKENS, {"id": room_id}, token=user.token)
    node = body["data"]["chatroom"]["messages"]["edges"][0]["node"]
    assert node["status"] == "COMPLETE"
    usage = node["tokenUsage"]
    assert usage["totalTokens"] > 0
    for kind, field in (("prompt", "promptTokens"), ("output", "outputTokens")):
        assert moved(before, after, "gemini_graphql_gemini_tokens_total", kind=kind) == usage[field]
    assert (
        moved(before, after, "gemini_graphql_gemini_tokens_total", kind="total")
        == (usage["totalTokens"])
    )
    # Nothing checked out of the pool once all is done; no label holds the user's data.
    assert value(after, "gemini_graphql_db_pool_connections_in_use") >= 0
    scraped = json.dumps(sorted(str(key) for key in after))
    for secret in (user.number, user.user_id, user.token, room_id, reply_id, "Metrics are"):
        assert secret not in scraped


async def test_gemini_failures_are_counted_by_status(
    live: Live, worker: Any, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str]
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(status=400))  # not worth retrying: the reply fails at once
    user = await login(live.http, sms)
    room_id = await create_room(live.http, user.token)
    async with httpx.AsyncClient(base_url=base_url(live), timeout=30) as http:
        before = await scrape(http)
        sent = await live.http(
            SEND, {"input": {"chatroomId": room_id, "content": "fail"}}, token=user.token
        )
        reply_id = sent["data"]["sendMessage"]["reply"]["id"]

        async def failed() -> bool:
            now = await scrape(http)
            return moved(before, now, "gemini_graphql_jobs_finished_total", outcome="failed") == 1

        await wait_for(failed)
        after = await scrape(http)
    assert moved(before, after, "gemini_graphql_gemini_errors_total", status="400") == 1
    assert moved(before, after, "gemini_graphql_reply_first_chunk_seconds_count") == 0
    assert reply_id not in json.dumps(sorted(str(key) for key in after))


async def test_operation_names_are_bounded(
    base_settings: Settings, sms: RecordingSms, gql: GraphQLClient
) -> None:
    token = (await login(gql, sms)).token
    """Clients choose operation names: the first 100 a process sees get series, the rest
    share `_other`; names that are ours (leading `_`) or very long are `_other` at once."""
    app = create_app(base_settings, sms=sms)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        client = GraphQLClient(http)
        for index in range(130):
            await client(f"query Capped{index} {{ __typename }}")
        await client("query _sneaky { __typename }")
        await client("query %s { __typename }" % ("Long" * 40))
        await client("{ __typename }")
        await client("this is not GraphQL", expect_status=200)
        async with WsClient.connect(url.replace("http://", "ws://") + "/graphql", token) as ws:
            for index in range(50):  # junk takes no name's place, and makes no field label
                query = f"subscription Junk{index} {{ junk{index} }}"
                message = {"id": str(index), "type": "subscribe", "payload": {"query": query}}
                await ws.socket.send(json.dumps(message))
                assert json.loads(await ws.socket.recv())["type"] == "error"
        samples = await scrape(http)
    names = {
        dict(labels)["operation_name"]
        for name, labels in samples
        if name == "gemini_graphql_operations_total"
    }
    capped = {name for name in names if name.startswith("Capped")}
    assert len(capped) == 100
    assert capped == {f"Capped{index}" for index in range(100)}
    assert "_sneaky" not in names and not any(name.startswith("LongLong") for name in names)
    assert value(samples, "gemini_graphql_operations_total", operation_type="query",
                 operation_name="_other") >= 32  # fmt: skip
    assert {"_anonymous", "_invalid"} <= names
    assert not any(name.startswith("Junk") for name in names)
    fields = {
        dict(labels)["field"]
        for name, labels in samples
        if name == "gemini_graphql_subscription_events_total"
    }
    assert not any(field.startswith("junk") for field in fields)


@pytest.fixture
def production(base_settings: Settings) -> Iterator[Settings]:
    yield replace(base_settings, app_env=AppEnv.PRODUCTION)


async def test_production_serves_metrics_only_with_the_bearer_token(
    production: Settings, sms: RecordingSms
) -> None:
    async with serve(create_app(production, sms=sms)) as url, httpx.AsyncClient(base_url=url) as h:
        response = await h.get("/metrics")
        assert response.status_code == 404  # no token configured: not served on this port
    token = "m" * 12 + "e7T-q2Lx9wZp0vRk"
    guarded = replace(production, metrics_token=token)
    async with serve(create_app(guarded, sms=sms)) as url, httpx.AsyncClient(base_url=url) as h:
        assert (await h.get("/metrics")).status_code == 401
        wrong = await h.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and token not in wrong.text
        samples = await scrape(h, headers={"authorization": f"Bearer {token}"})
        assert ("gemini_graphql_websockets_open", frozenset()) in samples


async def test_serve_with_two_processes_sums_them_on_the_metrics_port(
    base_settings: Settings, tmp_path: Path
) -> None:
    """`serve --workers 2` runs prometheus-client's multiprocess mode: METRICS_PORT (served
    by the supervisor) and /metrics of either process count every process's requests."""
    metrics_port = free_port()
    settings = replace(base_settings, metrics_port=metrics_port)
    (tmp_path / "counter_1.db").write_bytes(b"")  # an earlier run's file: emptied at start
    process, url = await start_api(
        settings,
        args=("serve", "--workers", "2", "--port"),
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    try:
        for _ in range(40):  # a connection each: the kernel spreads them over both processes
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                await GraphQLClient(http)("query TwoProcesses { __typename }")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            samples = await scrape(http, f"http://127.0.0.1:{metrics_port}/metrics")
            on_main_port = await scrape(http)
        labels = {"operation_type": "query", "operation_name": "TwoProcesses"}
        assert value(samples, "gemini_graphql_operations_total", **labels) == 40
        assert value(on_main_port, "gemini_graphql_operations_total", **labels) == 40
        # Both processes served some of them: each wrote its counters to a file of its own.
        served = set()
        for path in tmp_path.glob("counter_*.db"):
            counted = MultiProcessCollector.merge([str(path)], accumulate=False)
            for metric in counted:
                if metric.name == "gemini_graphql_operations":
                    served |= {path.name for sample in metric.samples if sample.value}
        assert len(served) == 2, served
        assert not (tmp_path / "counter_1.db").exists()
    finally:
        await process.stop()


async def test_the_worker_serves_its_metrics_on_its_port(
    chat_settings: Settings, redis_client: aioredis.Redis
) -> None:
    port = free_port()
    process = await start_worker(replace(chat_settings, metrics_port=port), redis_client)
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def serving() -> bool:
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(serving)
            samples = parse((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
        assert ("gemini_graphql_jobs_started_total", frozenset()) in samples
        assert ("gemini_graphql_queue_depth", frozenset()) in samples
    finally:
        await process.stop()
