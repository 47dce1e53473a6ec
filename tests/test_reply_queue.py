"""Workers poll when woken: by a queued reply's notice, by a retry coming due, and, for jobs
nobody announced, every idle interval."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

from arq.connections import ArqRedis

from gemini_graphql.chat.reply_queue import WAKE_CHANNEL, enqueue_reply, reply_job_id
from gemini_graphql.config import Settings
from gemini_graphql.testing.fakes.gemini import Script
from tests.chat_harness import Live, running_worker, send, user_with_room
from tests.conftest import RecordingSms
from tests.test_replies import wait_finished

NEVER = 3600.0  # an idle interval no test waits for


async def listening_for_notices(redis_client, settings: Settings) -> None:
    """Until a worker of `settings`' deployment listens (another run's worker does not count)."""
    channel = settings.redis_names.channel(WAKE_CHANNEL)
    async with asyncio.timeout(10):
        while (await redis_client.pubsub_numsub(channel))[0][1] < 1:
            await asyncio.sleep(0.02)


async def test_a_queued_reply_wakes_an_idle_worker(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(chat_settings, clock, idle_poll_seconds=NEVER):
        await listening_for_notices(redis_client, chat_settings)
        await asyncio.sleep(0.2)  # past its first polls: idle, waiting
        for _ in range(3):
            sent = await send(live.http, user.token, room_id)
            assert (await wait_finished(pg, sent["reply"]["id"], timeout=10))[
                "status"
            ] == "complete"


async def test_a_worker_wakes_only_for_its_own_deployment(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    """A worker of another deployment on the same Redis server, here even the same database
    (it differs in REDIS_PREFIX only), is neither woken by this one's notices nor finds its
    job, however often it polls its own queue (tests/test_redis_prefix.py has the rest)."""
    other = replace(chat_settings, redis_prefix=chat_settings.redis_prefix + "-other")
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(other, clock, idle_poll_seconds=0.05):
        await listening_for_notices(redis_client, other)
        reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]  # our notice
        await redis_client.publish(other.redis_names.channel(WAKE_CHANNEL), b"")  # its own
        await asyncio.sleep(0.5)
        row = await pg.fetchrow("SELECT status FROM messages WHERE id = $1", uuid.UUID(reply_id))
        assert row["status"] == "pending"
    async with running_worker(chat_settings, clock, idle_poll_seconds=NEVER):
        assert (await wait_finished(pg, reply_id, timeout=10))["status"] == "complete"


async def test_a_deferred_retry_wakes_its_worker_when_due(
    live: Live, chat_settings, clock, sms: RecordingSms, fake_gemini, redis_client, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(status=503), Script(status=503), Script(chunks=["third ", "time"]))
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(chat_settings, clock, idle_poll_seconds=NEVER):
        await listening_for_notices(redis_client, chat_settings)
        sent = await send(live.http, user.token, room_id)
        reply = await wait_finished(pg, sent["reply"]["id"], timeout=10)
    assert (reply["status"], reply["content"]) == ("complete", "third time")
    assert len(fake.requests) == 3


async def test_a_job_nobody_announced_is_found_by_the_idle_poll(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)  # no worker yet: the notice is lost
    reply_id = sent["reply"]["id"]
    # Due only in a moment, so the worker's first poll at start does not take it either.
    due_at_ms = int((time.time() + 1.0) * 1000)
    names = chat_settings.redis_names
    await redis_client.zadd(names.arq_queue, {reply_job_id(names, uuid.UUID(reply_id)): due_at_ms})
    async with running_worker(chat_settings, clock, idle_poll_seconds=0.2):
        assert (await wait_finished(pg, reply_id, timeout=10))["status"] == "complete"


async def test_enqueue_announces_each_new_job_once(redis_client, base_settings: Settings) -> None:
    """On the deployment's channel only: another one's, differing by its prefix, hears nothing."""
    queue = ArqRedis(connection_pool=redis_client.connection_pool)
    names = base_settings.redis_names
    other = replace(base_settings, redis_prefix=base_settings.redis_prefix + "-other")
    ours = names.channel(WAKE_CHANNEL)
    theirs = other.redis_names.channel(WAKE_CHANNEL)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(ours, theirs)
    for _ in range(2):
        await pubsub.get_message(timeout=1)  # the subscribe confirmations
    reply_id = uuid.uuid4()

    assert await enqueue_reply(queue, names, reply_id) is True
    assert await enqueue_reply(queue, names, reply_id) is False  # one job per reply

    notices = []
    while (
        message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    ) is not None:
        notices.append(message["channel"])
    assert notices == [ours.encode()]
    assert await redis_client.zscore(names.arq_queue, reply_job_id(names, reply_id)) is not None
    assert await redis_client.zcard(other.redis_names.arq_queue) == 0
    await pubsub.aclose()


async def test_a_reply_whose_job_was_never_queued_is_queued_again(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    """sendMessage's process dying between its commit and its enqueue leaves a PENDING reply
    with no job: workers queue such replies again once they are old enough."""
    user, room_id = await user_with_room(live.http, sms)
    names = chat_settings.redis_names

    async def send_and_lose_its_job() -> str:
        reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]
        job_id = reply_job_id(names, uuid.UUID(reply_id))
        await redis_client.delete(f"arq:job:{job_id}")
        await redis_client.zrem(names.arq_queue, job_id)
        return reply_id

    stranded = await send_and_lose_its_job()
    clock.advance(seconds=150)  # older than STRANDED_AFTER
    recent = await send_and_lose_its_job()

    # The sweep is an arq cron job, queued without a notice: the idle poll finds it.
    async with running_worker(chat_settings, clock, idle_poll_seconds=0.2):
        assert (await wait_finished(pg, stranded, timeout=10))["status"] == "complete"
        await asyncio.sleep(0.5)
    row = await pg.fetchrow("SELECT status FROM messages WHERE id = $1", uuid.UUID(recent))
    assert row["status"] == "pending"  # too recent: its job may still be on its way
    assert not await redis_client.exists(f"arq:job:{reply_job_id(names, uuid.UUID(recent))}")
