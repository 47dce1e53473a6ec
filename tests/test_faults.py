"""Faults under load: Redis restarted (keeping or losing its data) and PostgreSQL restarted
in the middle of replies, and workers killed or stopped. A real `worker` process, a real
uvicorn api, a private redis-server and (for PostgreSQL) a private cluster, each restarted
by the test. After every fault: the worker is alive, no reply is left unfinished, each
reply's stored text equals what its subscribers were sent, and the quota counts exactly
the replies that did not fail. The numbers (failed requests, recovery time) are printed."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.infra.migrate import migrate
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script
from gemini_graphql.testing.fakes.stripe import WEBHOOK_SECRET, FakeStripe, sign
from gemini_graphql.testing.processes import Process, spawn_worker, start_worker
from tests.auth_flows import login
from tests.chat_harness import SEND, StreamResult, WsClient, create_room
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve
from tests.servers import PostgresCluster, RedisServer

CHUNKS = [f"w{i} " for i in range(24)]
REPLY_TEXT = "".join(CHUNKS)


@dataclass
class Stack:
    settings: Settings
    gql: GraphQLClient
    ws_url: str
    worker: Process
    redis: aioredis.Redis  # a client of the stack's own Redis, for waiting on the worker


@contextlib.asynccontextmanager
async def stack(settings: Settings, sms: RecordingSms, clock: FakeClock) -> AsyncIterator[Stack]:
    """An api (uvicorn, in this process) and a worker process on `settings`' stores."""
    redis = aioredis.Redis.from_url(settings.redis_url)
    worker = await start_worker(settings, redis)
    try:
        app = create_app(settings, clock=clock, sms=sms)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield Stack(
                settings,
                GraphQLClient(http),
                url.replace("http://", "ws://") + "/graphql",
                worker,
                redis,
            )
    finally:
        await worker.stop()
        await redis.aclose()


async def send_messages(
    stack: Stack, sms: RecordingSms, users: int, each: int
) -> list[tuple[str, str]]:
    """(token, reply id) for `each` messages of `users` users."""
    sent = []
    for _ in range(users):
        user = await login(stack.gql, sms)
        room = await create_room(stack.gql, user.token)
        for index in range(each):
            body = await stack.gql(
                SEND,
                {"input": {"chatroomId": room, "content": f"question {index}"}},
                token=user.token,
            )
            payload = body["data"]["sendMessage"]
            assert payload["errors"] == [], payload
            sent.append((user.token, payload["reply"]["id"]))
    return sent


async def follow_to_the_end(
    ws_url: str, token: str, reply_id: str, timeout: float = 120
) -> tuple[str, int]:
    """What a careful client shows: subscribe, and on an error subscribe again where the
    error says (with `after`, or from the start after a restart). The text and the number
    of errors it met."""
    text, last, errors = "", 0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with WsClient.connect(ws_url, token) as client:
                result: StreamResult = await client.collect(
                    await client.start(reply_id, after=last or None),
                    timeout=deadline - time.monotonic(),
                )
        except (TimeoutError, OSError, AssertionError):  # the api could not even ack
            errors += 1
            await asyncio.sleep(0.5)
            continue
        text += result.text
        if result.events:
            last = result.events[-1]["seq"]
        if result.completed:
            return text, errors
        errors += 1
        message = (result.errors or [{}])[0].get("message", "")
        if "from its start" in message:
            text, last = "", 0
        elif (match := re.search(r"after: (\d+)", message)) is not None:
            last = int(match.group(1))
        await asyncio.sleep(0.3)
    raise AssertionError(f"reply {reply_id} did not finish in {timeout}s")


async def all_final(pg: asyncpg.Pool | asyncpg.Connection, timeout: float = 120) -> float:
    """Seconds until every reply is COMPLETE or FAILED."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while await pg.fetchval(
            "SELECT count(*) FROM messages WHERE status IN ('pending', 'streaming')"
        ):
            await asyncio.sleep(0.2)
    return time.monotonic() - started


async def check_outcome(pg: Any, results: dict[str, str]) -> None:
    """Every reply ended once, as its subscribers saw it, and the quota agrees."""
    rows = await pg.fetch("SELECT id, status, content FROM messages WHERE role = 'assistant'")
    assert {str(row["id"]) for row in rows} == set(results)
    for row in rows:
        assert row["status"] in ("complete", "failed"), row
        assert results[str(row["id"])] == row["content"], (
            row["status"],
            row["content"],
            results[str(row["id"])],
        )
    counted = await pg.fetchval("SELECT coalesce(sum(daily_message_count), 0) FROM users")
    assert counted == sum(row["status"] == "complete" for row in rows)


@dataclass
class Traffic:
    sent: int = 0
    failed: int = 0
    codes: set[str] = field(default_factory=set)
    last_failure: float = 0.0  # time.monotonic() of the last failed request

    def report(self, back_at: float) -> str:
        recovered = max(0.0, self.last_failure - back_at) if self.failed else 0.0
        return (
            f"{self.failed}/{self.sent} requests failed {sorted(self.codes)}, the last "
            f"{recovered:.1f}s after the server was back"
        )


async def traffic_during(stack: Stack, sms: RecordingSms, stop: asyncio.Event) -> Traffic:
    """Requests every 50 ms while the fault lasts, reading the user (kept by the api
    between changes), the room list (cached in Redis) and a room's messages (always from
    PostgreSQL)."""
    user = await login(stack.gql, sms)
    room = await create_room(stack.gql, user.token)
    query = (
        "query($room: ID!) { me { id usage { used } } chatrooms(first: 5) { edges { node { id } } }"
        " chatroom(id: $room) { messages(last: 5) { edges { node { id } } } } }"
    )
    traffic = Traffic()
    while not stop.is_set():
        traffic.sent += 1
        try:
            body = await stack.gql(query, {"room": room}, token=user.token)
        except (httpx.HTTPError, AssertionError):
            body = {"errors": [{"extensions": {"code": "transport"}}]}
        if body.get("errors"):
            traffic.failed += 1
            traffic.last_failure = time.monotonic()
            traffic.codes.update(error["extensions"]["code"] for error in body["errors"])
        await asyncio.sleep(0.05)
    return traffic


async def settled(
    running: Stack,
    pg: Any,
    replies: list[tuple[str, str]],
    seen: list[tuple[str, int]],
    fault_at: float,
    stop: asyncio.Event,
    traffic: asyncio.Task[Traffic],
) -> tuple[float, Traffic]:
    """What every outage must leave behind, checked; (seconds from the fault until every
    reply was final, the traffic meanwhile)."""
    recovery = await all_final(pg) + (time.monotonic() - fault_at)
    await asyncio.sleep(1.0)  # traffic after the return shows the recovery
    stop.set()
    done = await traffic
    assert running.worker.popen.poll() is None, "the worker exited"
    await check_outcome(
        pg, {reply: text for (_, reply), (text, _) in zip(replies, seen, strict=True)}
    )
    assert done.codes <= {"SERVICE_UNAVAILABLE"}, done.codes  # never a masked internal error
    assert done.last_failure < time.monotonic() - 0.5  # requests succeed again
    return recovery, done


@pytest.fixture
async def gemini_slowly(fake_gemini: tuple[FakeGemini, str]) -> tuple[FakeGemini, str]:
    fake, _ = fake_gemini
    fake.default = Script(chunks=CHUNKS, delay=0.08)  # about 2 s a reply
    return fake_gemini


@pytest.mark.parametrize("keep_data", [True, False], ids=["keeping-data", "losing-data"])
async def test_a_redis_restart_in_the_middle_of_replies(
    chat_settings: Settings,
    gemini_slowly: Any,
    pg: asyncpg.Pool,
    sms: RecordingSms,
    clock: FakeClock,
    keep_data: bool,
) -> None:
    async with RedisServer(persistent=keep_data) as redis_server:
        settings = replace(chat_settings, redis_url=redis_server.url)
        async with stack(settings, sms, clock) as running:
            replies = await send_messages(running, sms, users=3, each=3)
            followers = [
                asyncio.create_task(follow_to_the_end(running.ws_url, t, r)) for t, r in replies
            ]
            stop = asyncio.Event()
            traffic = asyncio.create_task(traffic_during(running, sms, stop))
            await asyncio.sleep(0.8)  # the replies are under way
            outage_started = time.monotonic()
            await redis_server.restart(down_for=1.0, keep_data=keep_data)
            back_at = time.monotonic()
            seen = await asyncio.gather(*followers)
            recovery, done = await settled(
                running, pg, replies, seen, outage_started, stop, traffic
            )
            assert all(text == REPLY_TEXT for text, _ in seen)  # nothing failed: Redis came back
            # The worker takes new work after the restart.
            after = await send_messages(running, sms, users=1, each=1)
            assert (await follow_to_the_end(running.ws_url, *after[0]))[0] == REPLY_TEXT
            print(
                f"\nredis restart ({'keeping' if keep_data else 'losing'} data, 1 s down): "
                f"{done.report(back_at)}; subscribers re-subscribed "
                f"{sum(errors for _, errors in seen)} times for {len(seen)} replies, all replies "
                f"final {recovery:.1f}s after the outage began"
            )


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[PostgresCluster]:
    async with PostgresCluster() as running:
        yield running


async def test_a_postgresql_restart_in_the_middle_of_replies(
    chat_settings: Settings,
    gemini_slowly: Any,
    cluster: PostgresCluster,
    sms: RecordingSms,
    clock: FakeClock,
) -> None:
    url = await cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(migrate, url)
    settings = replace(chat_settings, database_url=url, stripe_webhook_secret=WEBHOOK_SECRET)
    async with stack(settings, sms, clock) as running:
        replies = await send_messages(running, sms, users=3, each=3)
        followers = [
            asyncio.create_task(follow_to_the_end(running.ws_url, t, r)) for t, r in replies
        ]
        stop = asyncio.Event()
        traffic = asyncio.create_task(traffic_during(running, sms, stop))
        await asyncio.sleep(0.8)
        outage_started = time.monotonic()
        restarting = asyncio.create_task(cluster.restart(down_for=5.0))
        await asyncio.sleep(2.0)
        # Stripe's webhook meanwhile: 503 (Stripe retries later), and applied once it can be.
        event = FakeStripe().event(
            "customer.created", {"id": "cus_x", "object": "customer"}, int(time.time())
        )
        body, header = sign(event)
        webhook = await running.gql.http.post(
            "/webhook/stripe", content=body, headers={"Stripe-Signature": header}
        )
        assert webhook.status_code == 503 and webhook.headers["retry-after"]
        await restarting
        back_at = time.monotonic()
        seen = await asyncio.gather(*followers)
        pg = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            recovery, done = await settled(
                running, pg, replies, seen, outage_started, stop, traffic
            )
            after = await send_messages(running, sms, users=1, each=1)
            assert (await follow_to_the_end(running.ws_url, *after[0]))[0] == REPLY_TEXT
            webhook = await running.gql.http.post(
                "/webhook/stripe", content=body, headers={"Stripe-Signature": header}
            )
            assert webhook.status_code == 200
        finally:
            await pg.close()
        print(
            f"\npostgresql restart (5 s down): {done.report(back_at)}; "
            f"all replies final {recovery:.1f}s after the outage began"
        )


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGKILL"])
async def test_a_worker_stopped_in_the_middle_of_replies(
    chat_settings: Settings,
    gemini_slowly: Any,
    pg: asyncpg.Pool,
    redis_client: aioredis.Redis,
    sms: RecordingSms,
    clock: FakeClock,
    signal: str,
) -> None:
    """SIGTERM lets the replies in flight finish; SIGKILL leaves them to a new worker,
    which continues each from what its subscribers were sent."""
    settings = replace(chat_settings, worker_job_timeout_seconds=10)
    async with stack(settings, sms, clock) as running:
        replies = await send_messages(running, sms, users=2, each=3)
        followers = [
            asyncio.create_task(follow_to_the_end(running.ws_url, t, r)) for t, r in replies
        ]
        await asyncio.sleep(0.8)
        stopped_at = time.monotonic()
        if signal == "SIGKILL":
            running.worker.kill()
        else:
            await running.worker.stop()
        replacement = await start_worker(settings, running.redis)
        try:
            seen = await asyncio.gather(*followers)
            recovery = await all_final(pg) + (time.monotonic() - stopped_at)
            assert replacement.popen.poll() is None
            await check_outcome(
                pg, {reply: text for (_, reply), (text, _) in zip(replies, seen, strict=True)}
            )
            statuses = await pg.fetch("SELECT status FROM messages WHERE role = 'assistant'")
            assert all(row["status"] == "complete" for row in statuses)
        finally:
            await replacement.stop()
        print(
            f"\nworker {signal}: all {len(replies)} replies complete {recovery:.1f}s after the signal"
        )


async def test_a_worker_started_without_redis_waits_and_outlives_a_long_outage(
    chat_settings: Settings,
    gemini_slowly: Any,
    pg: asyncpg.Pool,
    sms: RecordingSms,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """arq's own loop ends at the first failed poll; ours logs once and carries on."""
    log = tmp_path / "worker.log"
    async with RedisServer() as redis_server:
        settings = replace(chat_settings, redis_url=redis_server.url)
        await redis_server.stop()
        early = spawn_worker(settings, str(log))
        try:
            await asyncio.sleep(3.0)
            assert early.popen.poll() is None, "the worker exited while Redis was down"
            await redis_server.start(keep_data=False)
            async with stack(settings, sms, clock) as running:
                first = await send_messages(running, sms, users=1, each=1)
                assert (await follow_to_the_end(running.ws_url, *first[0]))[0] == REPLY_TEXT
                await redis_server.restart(down_for=8.0, keep_data=False)
                assert early.popen.poll() is None and running.worker.popen.poll() is None
                again = await send_messages(running, sms, users=1, each=1)
                assert (await follow_to_the_end(running.ws_url, *again[0]))[0] == REPLY_TEXT
        finally:
            await early.stop()
    lines = log.read_text().splitlines()
    went = [line for line in lines if "Redis (job queue) unavailable" in line]
    came_back = [line for line in lines if "Redis (job queue) available again" in line]
    assert len(went) == 2 and len(came_back) == 2, lines  # one line each way per outage
