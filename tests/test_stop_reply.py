"""stopReply: a reply stopped mid-stream, while PENDING, after its end, racing its end, from
another api process, after its worker died or froze, between two reads of a fast stream, and
just as a worker tries to claim it; who may stop what.

Everything is real: PostgreSQL, Redis, the arq worker (in this process or its own), uvicorn,
websocket subscribers, and the fake Gemini behind the real google-genai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import redis.asyncio as aioredis
from arq.jobs import Job

from gemini_graphql.app.http_app import create_app
from gemini_graphql.chat.conversation import STOP_WAIT_SECONDS
from gemini_graphql.chat.reply_queue import reply_job_id
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.testing.fakes.gemini import Script
from gemini_graphql.testing.processes import start_api, start_worker
from tests.auth_flows import login
from tests.chat_harness import Live, WsClient, running_worker, send, stream, user_with_room
from tests.conftest import GraphQLClient
from tests.live import serve
from tests.servers import RedisServer

STOP = """
mutation($input: StopReplyInput!) {
  stopReply(input: $input) {
    message { id status content tokenUsage { promptTokens outputTokens totalTokens } }
    errors { code field message }
  }
}"""
LONG = [f"c{i} " for i in range(200)]


async def stop(gql: GraphQLClient, token: str | None, message_id: str) -> dict[str, Any]:
    body = await gql(STOP, {"input": {"messageId": message_id}}, token=token)
    return body["data"]["stopReply"]


async def row(pg, reply_id: str) -> dict[str, Any]:
    found = await pg.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(reply_id))
    return dict(found)


async def usage(gql: GraphQLClient, token: str) -> tuple[int, int]:
    """(messages used today, tokens today)."""
    body = await gql("{ me { usage { used tokensToday } } }", token=token)
    found = body["data"]["me"]["usage"]
    return found["used"], found["tokensToday"]


async def make_pro(pg, user_id: str) -> None:
    await pg.execute("UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user_id))


def check_events(events: list[dict[str, Any]], status: str) -> str:
    """One stream, as a subscriber saw it: seq 1..n, one final event (the last, delta "",
    with `status` and the stored text); the text of the deltas before it."""
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1)), events
    *deltas, final = events
    assert all(event["status"] == "STREAMING" for event in deltas), events
    assert (final["status"], final["delta"]) == (status, ""), final
    text = "".join(event["delta"] for event in deltas)
    assert (final["message"]["status"], final["message"]["content"]) == (status, text)
    return text


async def check_stopped(pg, payload: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The payload, the subscriber's events and the stored row agree: STOPPED, with exactly
    the text streamed before the final event."""
    assert payload["errors"] == [], payload
    text = check_events(events, "STOPPED")
    assert (payload["message"]["status"], payload["message"]["content"]) == ("STOPPED", text)
    stored = await row(pg, payload["message"]["id"])
    assert (stored["status"], stored["content"]) == ("stopped", text)
    return text


async def stop_mid_stream(
    send_via: GraphQLClient, stop_via: GraphQLClient, ws_url: str, token: str, room_id: str
) -> tuple[str, dict[str, Any], list[dict[str, Any]], float]:
    """Send, follow the reply on `ws_url` for 4 deltas, stop it: (reply id, payload, every
    event the subscriber got, seconds stopReply took)."""
    sent = await send(send_via, token, room_id, "tell me a long story")
    reply_id = sent["reply"]["id"]
    async with WsClient.connect(ws_url, token) as ws:
        op = await ws.start(reply_id)
        first = await ws.collect(op, limit=4)
        assert first.errors is None and len(first.events) == 4, first
        started = time.monotonic()
        payload = await stop(stop_via, token, reply_id)
        took = time.monotonic() - started
        rest = await ws.collect(op, timeout=10)
    assert rest.completed and rest.errors is None, rest
    return reply_id, payload, first.events + rest.events, took


async def check_gemini_let_go(fake, streamed: int) -> None:
    """One request, whose stream the SDK closed early (not drained), and no other later."""
    [request] = fake.requests
    assert request.hung_up and not request.finished, request
    assert request.chunks_sent < 60, request.chunks_sent
    assert request.chunks_sent >= streamed
    await asyncio.sleep(1.0)
    assert len(fake.requests) == 1, "the stopped reply was sent to Gemini again"
    assert request.chunks_sent < 60


async def test_stop_mid_stream(live: Live, worker, sms, fake_gemini, pg) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=LONG, delay=0.05))
    user, room_id = await user_with_room(live.http, sms)
    reply_id, payload, events, _ = await stop_mid_stream(
        live.http, live.http, live.ws_url, user.token, room_id
    )
    text = await check_stopped(pg, payload, events)
    assert text.startswith("c0 c1 c2 c3 ") and len(events) - 1 < 60
    await check_gemini_let_go(fake, len(events) - 1)
    # The tokens Gemini reported for the chunks the worker read, and the unit stays used.
    tokens = payload["message"]["tokenUsage"]
    assert tokens is not None, payload
    assert tokens["outputTokens"] == len(events) - 1, (tokens, len(events))
    assert tokens["promptTokens"] == fake.requests[0].prompt_tokens
    assert tokens["totalTokens"] == tokens["promptTokens"] + tokens["outputTokens"]
    stored = await row(pg, reply_id)
    assert (stored["status"], stored["content"]) == ("stopped", text)
    assert stored["total_tokens"] == tokens["totalTokens"]
    assert await usage(live.http, user.token) == (1, tokens["totalTokens"])


async def test_stop_pending_reply_before_any_worker(
    live: Live, chat_settings, sms, fake_gemini, pg, redis_client
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    reply_id = sent["reply"]["id"]
    assert sent["reply"]["status"] == "PENDING"
    async with WsClient.connect(live.ws_url, user.token) as ws:
        op = await ws.start(reply_id)
        await asyncio.sleep(0.2)  # the subscriber waits on the empty stream
        payload = await stop(live.http, user.token, reply_id)
        live_result = await ws.collect(op, timeout=5)
    assert payload["errors"] == [], payload
    assert (payload["message"]["status"], payload["message"]["content"]) == ("STOPPED", "")
    assert payload["message"]["tokenUsage"] is None
    assert live_result.completed and check_events(live_result.events, "STOPPED") == ""
    async with running_worker(chat_settings):
        job = Job(reply_job_id(chat_settings.redis_names, uuid.UUID(reply_id)), redis_client)
        async with asyncio.timeout(10):  # the worker took the job, and let it be
            while (result := await job.result_info()) is None:
                await asyncio.sleep(0.05)
        assert result.success and result.result == "stopped", result
        await asyncio.sleep(1.5)
        assert fake.requests == []
    stored = await row(pg, reply_id)
    assert (stored["status"], stored["content"]) == ("stopped", "")
    late = await stream(live.ws_url, user.token, reply_id)
    assert late.completed and check_events(late.events, "STOPPED") == ""
    assert await usage(live.http, user.token) == (1, 0)


async def test_stop_finished_reply_changes_nothing(
    live: Live, worker, sms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=["All ", "done ", "here."]))
    user, room_id = await user_with_room(live.http, sms)
    reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]
    before = await stream(live.ws_url, user.token, reply_id)
    assert check_events(before.events, "COMPLETE") == "All done here."
    stored = await row(pg, reply_id)
    for _ in range(2):
        payload = await stop(live.http, user.token, reply_id)
        assert payload["errors"] == [], payload
        message = payload["message"]
        assert (message["status"], message["content"]) == ("COMPLETE", "All done here.")
        assert message["tokenUsage"]["totalTokens"] == stored["total_tokens"]
    assert await row(pg, reply_id) == stored
    after = await stream(live.ws_url, user.token, reply_id)
    assert after.events == before.events
    assert len(fake.requests) == 1
    assert await usage(live.http, user.token) == (1, stored["total_tokens"])


async def test_stop_racing_the_natural_end(live: Live, worker, sms, fake_gemini, pg) -> None:
    fake, _ = fake_gemini
    fake.default = Script(delay=0.005)  # echoes the question: one chunk per word
    seed = int(os.environ.get("STOP_RACE_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    user, room_id = await user_with_room(live.http, sms)
    await make_pro(pg, user.user_id)
    outcomes: dict[str, str] = {}
    async with WsClient.connect(live.ws_url, user.token) as ws:
        for index in range(15):
            count = rng.randint(3, 6)  # "Echo:" and count - 1 words
            question = " ".join(f"w{index}.{k}" for k in range(count - 1))
            reply_id = (await send(live.http, user.token, room_id, question))["reply"]["id"]
            op = await ws.start(reply_id)
            # Aim at the end: after 0..all of the deltas, plus a few milliseconds.
            events = []
            if wait := rng.randint(0, count):
                seen = await ws.collect(op, limit=wait)
                assert not seen.completed and len(seen.events) == wait, seen
                events = seen.events
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            payload = await stop(live.http, user.token, reply_id)
            rest = await ws.collect(op, timeout=10)
            stored = await row(pg, reply_id)
            where = f"seed {seed}, iteration {index}: {stored['status']}"
            assert stored["status"] in ("complete", "stopped"), where
            assert payload["errors"] == [], where
            status = stored["status"].upper()
            assert payload["message"]["status"] == status, (where, payload)
            assert rest.completed, (where, rest)
            text = check_events(events + rest.events, status)
            assert stored["content"] == text == payload["message"]["content"], (where, text)
            if status == "COMPLETE":
                assert text == f"Echo: {question}", where
            outcomes[reply_id] = stored["status"]
    await asyncio.sleep(0.5)  # nothing changes afterwards
    rows = await pg.fetch("SELECT id, status FROM messages WHERE role = 'assistant'")
    assert {str(r["id"]): r["status"] for r in rows} == outcomes
    print(f"seed {seed}: {sorted(outcomes.values())}")


async def test_stop_from_another_api_process(
    chat_settings, fake_gemini, redis_client, pg, make_client, sms
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=LONG, delay=0.05))
    processes = []
    try:
        (api_a, url_a), (api_b, url_b), worker = await asyncio.gather(
            start_api(chat_settings),
            start_api(chat_settings),
            start_worker(chat_settings, redis_client),
        )
        processes += [api_a, api_b, worker]
        local = GraphQLClient(await make_client())  # codes come back by SMS to this test
        user, room_id = await user_with_room(local, sms)
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=30) as http_a,
            httpx.AsyncClient(base_url=url_b, timeout=30) as http_b,
        ):
            gql_a, gql_b = GraphQLClient(http_a), GraphQLClient(http_b)
            ws_b = url_b.replace("http://", "ws://") + "/graphql"
            reply_id, payload, events, took = await stop_mid_stream(
                gql_a, gql_b, ws_b, user.token, room_id
            )
            # The worker ended it (not the api after its wait), with exactly what was sent.
            assert took < STOP_WAIT_SECONDS, took
            await check_stopped(pg, payload, events)
            await check_gemini_let_go(fake, len(events) - 1)
            tokens = payload["message"]["tokenUsage"]
            assert tokens["outputTokens"] == len(events) - 1, tokens
            assert await usage(gql_a, user.token) == (1, tokens["totalTokens"])
    finally:
        for process in processes:
            await process.stop()


async def stop_without_its_worker(live: Live, settings, redis_client, pg, sms, fake, end):
    """A worker process streams a reply; `end(process)` takes it away; stopReply still ends
    it, itself, after its bounded wait, with what the subscriber got."""
    fake.script(Script(chunks=LONG, delay=0.05))
    process = await start_worker(settings, redis_client)
    try:
        user, room_id = await user_with_room(live.http, sms)
        reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]
        async with WsClient.connect(live.ws_url, user.token) as ws:
            op = await ws.start(reply_id)
            first = await ws.collect(op, limit=4)
            end(process)
            assert (await row(pg, reply_id))["status"] == "streaming"
            started = time.monotonic()
            payload = await stop(live.http, user.token, reply_id)
            took = time.monotonic() - started
            rest = await ws.collect(op, timeout=10)
        assert STOP_WAIT_SECONDS - 0.5 <= took < STOP_WAIT_SECONDS + 2.0, took
        assert rest.completed, rest
        text = await check_stopped(pg, payload, first.events + rest.events)
        assert text.startswith("c0 c1 c2 c3 ")
        stored = await row(pg, reply_id)
        assert await usage(live.http, user.token) == (1, stored["total_tokens"] or 0)
        return process, user, reply_id, first.events + rest.events, stored
    except BaseException:
        process.popen.send_signal(signal.SIGCONT)  # a no-op once it was killed
        await process.stop()
        raise


async def test_stop_when_the_worker_was_killed(
    live: Live, chat_settings, fake_gemini, redis_client, pg, sms
) -> None:
    process, *_ = await stop_without_its_worker(
        live, chat_settings, redis_client, pg, sms, fake_gemini[0], lambda p: p.kill()
    )
    await process.stop()


async def test_stop_when_the_worker_never_reacts(
    live: Live, chat_settings, fake_gemini, redis_client, pg, sms
) -> None:
    """A frozen worker (SIGSTOP) is stopped for; when it wakes it hears the stop late and
    must leave the reply, its stream and the user's counts as the api left them."""
    fake = fake_gemini[0]
    process, user, reply_id, events, stored = await stop_without_its_worker(
        live,
        chat_settings,
        redis_client,
        pg,
        sms,
        fake,
        lambda p: p.popen.send_signal(signal.SIGSTOP),
    )
    try:
        process.popen.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.5)
        assert await row(pg, reply_id) == stored
        stream_key = ReplyChannels(chat_settings.redis_names).stream(uuid.UUID(reply_id))
        assert await redis_client.xlen(stream_key) == len(events)
        assert (await stream(live.ws_url, user.token, reply_id)).events == events
        assert await usage(live.http, user.token) == (1, stored["total_tokens"] or 0)
        assert len(fake.requests) == 1
        # Awake, it must let go of Gemini, not leave the call running (see the next test).
        assert fake.requests[0].hung_up and not fake.requests[0].finished, fake.requests[0]
    finally:
        await process.stop()


async def test_stop_between_reads_lets_go_of_gemini(live: Live, worker, sms, fake_gemini, pg):
    """A fast stream: the stop often arrives while the worker writes a delta, not while it
    waits for Gemini, and the reply ends at the next read. The call must end either way."""
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    await make_pro(pg, user.user_id)
    left_open = []
    for index in range(5):
        fake.script(Script(chunks=[f"f{i} " for i in range(5000)], delay=0.001))
        reply_id = (await send(live.http, user.token, room_id, f"fast {index}"))["reply"]["id"]
        async with WsClient.connect(live.ws_url, user.token) as ws:
            op = await ws.start(reply_id)
            first = await ws.collect(op, limit=20)
            payload = await stop(live.http, user.token, reply_id)
            rest = await ws.collect(op, timeout=10)
        await check_stopped(pg, payload, first.events + rest.events)
        request = fake.requests[-1]
        await asyncio.sleep(0.5)
        sent = request.chunks_sent
        await asyncio.sleep(0.5)
        if not request.hung_up or request.chunks_sent != sent:
            left_open.append((index, len(first.events + rest.events), request.chunks_sent))
    assert left_open == [], f"Gemini calls still streaming after their stop: {left_open}"


async def waiting_on_locks(pg, count: int) -> None:
    async with asyncio.timeout(10):
        while (
            await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            < count
        ):
            await asyncio.sleep(0.02)


async def test_worker_losing_its_claim_to_a_stop_leaves_the_stream_to_it(
    chat_settings, sms, clock, fake_gemini, pg
) -> None:
    """stopReply of a PENDING reply commits STOPPED just before a worker's claim, and the
    worker reads the stream before the api writes the final event into it (forced here: the
    row held locked until both wait on it, then writes paused on a Redis of this test's own).
    The stream must still be one final STOPPED event, and the worker's job must succeed."""
    fake, _ = fake_gemini
    async with RedisServer() as private, contextlib.AsyncExitStack() as stack:
        settings = replace(chat_settings, redis_url=private.url)
        redis = aioredis.Redis.from_url(private.url)
        stack.push_async_callback(redis.aclose)
        url = await stack.enter_async_context(serve(create_app(settings, clock=clock, sms=sms)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        gql, ws_url = GraphQLClient(http), url.replace("http://", "ws://") + "/graphql"
        user, room_id = await user_with_room(gql, sms)
        reply_id = (await send(gql, user.token, room_id))["reply"]["id"]
        ws = await stack.enter_async_context(WsClient.connect(ws_url, user.token))
        op = await ws.start(reply_id)
        async with pg.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", uuid.UUID(reply_id)
            )
            stopping = asyncio.create_task(stop(gql, user.token, reply_id))
            await waiting_on_locks(pg, 1)  # the api's UPDATE first in line
            await stack.enter_async_context(running_worker(settings))
            await waiting_on_locks(pg, 2)  # then the worker's claim
            await redis.execute_command("CLIENT", "PAUSE", 500, "WRITE")
        payload = await stopping
        result = await ws.collect(op, timeout=10)
        job = Job(reply_job_id(settings.redis_names, uuid.UUID(reply_id)), redis)
        async with asyncio.timeout(10):
            while (done := await job.result_info()) is None:
                await asyncio.sleep(0.05)
        assert (payload["message"]["status"], payload["message"]["content"]) == ("STOPPED", "")
        assert result.completed and fake.requests == []
        shape = [(e["seq"], e["delta"], e["status"]) for e in result.events]
        assert shape == [(1, "", "STOPPED")], shape
        assert done.success and done.result == "stopped", done.result


async def test_who_may_stop_what(
    live: Live, sms, pg, redis_client, reply_channels: ReplyChannels
) -> None:
    owner, room_id = await user_with_room(live.http, sms)
    other = await login(live.http, sms)
    sent = await send(live.http, owner.token, room_id)  # no worker: it stays PENDING
    reply_id, question_id = sent["reply"]["id"], sent["message"]["id"]
    before = await row(pg, reply_id), await row(pg, question_id)
    cases = [
        (other.token, reply_id, "NOT_FOUND"),
        (owner.token, question_id, "INVALID_INPUT"),
        (owner.token, "nope", "NOT_FOUND"),
        (owner.token, str(uuid.uuid4()), "NOT_FOUND"),
    ]
    for token, target, code in cases:
        payload = await stop(live.http, token, target)
        assert payload["message"] is None, (target, payload)
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, "messageId")]
    body = await live.http(STOP, {"input": {"messageId": reply_id}})
    assert body.get("data") is None, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
    assert (await row(pg, reply_id), await row(pg, question_id)) == before  # untouched
    reply = uuid.UUID(reply_id)
    assert not await redis_client.exists(
        reply_channels.stop_marker(reply), reply_channels.stream(reply)
    )
