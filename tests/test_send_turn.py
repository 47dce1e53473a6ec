"""A turn's write and its job, as sendMessage makes them cheaply: PostgreSQL's one statement
(parallel turns in one room still make one branch) and the one-command enqueue, held to
arq's enqueue_job (the same job, the same dedup, either way round)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, result_key_prefix
from arq.jobs import Job, JobStatus

from gemini_graphql.chat.reply_queue import (
    GENERATE_REPLY,
    WAKE_CHANNEL,
    enqueue_reply,
    reply_job,
    reply_job_id,
)
from gemini_graphql.config import Settings
from tests.auth_flows import login
from tests.chat_harness import create_room, send
from tests.conftest import GraphQLClient, RecordingSms
from tests.servers import RedisServer

TURNS = 24


async def test_parallel_sends_to_one_room_make_one_branch(
    make_client, sms: RecordingSms, pg
) -> None:
    """Each turn goes after the leaf the one before it left: no two messages share a parent,
    the branch from the room's leaf up holds every message, and each send counted once."""
    gql = GraphQLClient(await make_client(basic_daily_limit=1000))
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    results = await asyncio.gather(*(send(gql, user.token, room_id, f"m{i}") for i in range(TURNS)))
    assert all(payload["errors"] == [] for payload in results), results[:3]
    assert sorted(payload["usage"]["used"] for payload in results) == list(range(1, TURNS + 1))

    rows = {
        row["id"]: row
        for row in await pg.fetch("SELECT id, role, parent_id, content, status FROM messages")
    }
    assert len(rows) == 2 * TURNS
    parents = [row["parent_id"] for row in rows.values()]
    assert len(set(parents)) == len(parents)  # one branch: nothing has two children
    leaf = await pg.fetchval(
        "SELECT current_leaf_id FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    branch = []
    while leaf is not None:
        branch.append(rows[leaf])
        leaf = rows[leaf]["parent_id"]
    assert len(branch) == 2 * TURNS
    assert [row["role"] for row in branch] == ["assistant", "user"] * TURNS
    assert all(row["status"] == "pending" for row in branch[::2])
    for payload in results:
        message, reply = rows[uuid.UUID(payload["message"]["id"])], payload["reply"]
        assert rows[uuid.UUID(reply["id"])]["parent_id"] == message["id"]
        assert message["content"] == payload["message"]["content"]


def queue(redis_client: aioredis.Redis) -> ArqRedis:
    return ArqRedis(connection_pool=redis_client.connection_pool)


async def test_a_reply_job_is_the_job_arq_would_queue(
    redis_client: aioredis.Redis, base_settings: Settings
) -> None:
    arq, names, reply_id = queue(redis_client), base_settings.redis_names, uuid.uuid4()
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert await enqueue_reply(arq, names, reply_id, trace=trace) is True

    job_id = reply_job_id(names, reply_id)
    job = Job(job_id, arq, _queue_name=names.arq_queue)
    assert await job.status() == JobStatus.queued
    info = await job.info()
    assert info is not None
    assert (info.function, info.args, info.kwargs, info.job_try) == (
        GENERATE_REPLY,
        (str(reply_id),),
        {"trace": trace},
        None,
    )
    score = await redis_client.zscore(names.arq_queue, job_id)
    assert score == int(info.enqueue_time.timestamp() * 1000)  # runnable at once
    ttl_ms = await redis_client.pttl(f"arq:job:{job_id}")
    assert expires_extra_ms - 60_000 < ttl_ms <= expires_extra_ms

    untraced = uuid.uuid4()
    assert await enqueue_reply(arq, names, untraced) is True
    untraced_info = await Job(reply_job_id(names, untraced), arq).info()
    assert untraced_info is not None and untraced_info.kwargs == {}


async def test_job_ids_are_refused_as_arq_refuses_them(
    redis_client: aioredis.Redis, base_settings: Settings
) -> None:
    """Ours refuses a job arq queued and a kept result; arq refuses a job we queued."""
    arq, names = queue(redis_client), base_settings.redis_names

    by_arq = uuid.uuid4()
    queued = await arq.enqueue_job(
        GENERATE_REPLY,
        str(by_arq),
        _job_id=reply_job_id(names, by_arq),
        _queue_name=names.arq_queue,
    )
    assert queued is not None
    assert await enqueue_reply(arq, names, by_arq) is False

    by_us = uuid.uuid4()
    assert await enqueue_reply(arq, names, by_us) is True
    again = await arq.enqueue_job(
        GENERATE_REPLY, str(by_us), _job_id=reply_job_id(names, by_us), _queue_name=names.arq_queue
    )
    assert again is None

    finished = uuid.uuid4()  # its job ran, and its result is kept
    await redis_client.set(result_key_prefix + reply_job_id(names, finished), b"x", ex=60)
    assert await enqueue_reply(arq, names, finished) is False
    assert await redis_client.zscore(names.arq_queue, reply_job_id(names, finished)) is None
    assert await redis_client.zcard(names.arq_queue) == 2


@pytest.fixture
async def fresh_redis() -> AsyncIterator[aioredis.Redis]:
    """A private server: its script cache can be flushed without touching anyone else's."""
    server = RedisServer()
    await server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        await server.stop(keep_data=False)


async def test_a_job_is_queued_on_a_server_that_lost_the_script(
    fresh_redis: aioredis.Redis, base_settings: Settings
) -> None:
    """After a restart or a SCRIPT FLUSH, alone or with a caller's other commands: queued
    once, with one notice, and the caller's commands done once."""
    arq, names = queue(fresh_redis), base_settings.redis_names
    pubsub = fresh_redis.pubsub()
    await pubsub.subscribe(names.channel(WAKE_CHANNEL))
    await pubsub.get_message(timeout=1)  # the confirmation

    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    job = reply_job(arq, names, first)
    async with fresh_redis.pipeline(transaction=True) as pipe:
        pipe.incr("other")
        job.queue_on(pipe)
        other, result = await pipe.execute(raise_on_error=False)
    assert other == 1 and isinstance(result, Exception)  # NOSCRIPT: never loaded here
    assert await job.queued(result) is True
    assert await fresh_redis.get("other") == b"1"

    assert await reply_job(arq, names, second).enqueue() is True  # loaded by now
    await fresh_redis.script_flush()
    assert await enqueue_reply(arq, names, third) is True
    assert await enqueue_reply(arq, names, third) is False

    for reply_id in (first, second, third):
        assert await fresh_redis.zscore(names.arq_queue, reply_job_id(names, reply_id))
    notices = 0
    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is not None:
        notices += 1
    assert notices == 3
    await pubsub.aclose()
