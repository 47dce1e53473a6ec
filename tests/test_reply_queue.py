"""Workers poll when woken: by a queued reply's notice, by a retry coming due, and, for jobs
nobody announced, every idle interval."""

from __future__ import annotations

import asyncio
import time
import uuid

from arq.connections import ArqRedis
from arq.constants import default_queue_name

from gemini_graphql.chat.reply_queue import WAKE_CHANNEL, enqueue_reply, reply_job_id
from tests.chat_harness import Live, running_worker, send, user_with_room
from tests.conftest import RecordingSms
from gemini_graphql.testing.fakes.gemini import Script
from tests.test_replies import wait_finished

NEVER = 3600.0  # an idle interval no test waits for


async def listening_for_notices(redis_client) -> None:
    async with asyncio.timeout(10):
        while (await redis_client.pubsub_numsub(WAKE_CHANNEL))[0][1] < 1:
            await asyncio.sleep(0.02)


async def test_a_queued_reply_wakes_an_idle_worker(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(chat_settings, clock, idle_poll_seconds=NEVER):
        await listening_for_notices(redis_client)
        await asyncio.sleep(0.2)  # past its first polls: idle, waiting
        for _ in range(3):
            sent = await send(live.http, user.token, room_id)
            assert (await wait_finished(pg, sent["reply"]["id"], timeout=10))["status"] == "complete"


async def test_a_deferred_retry_wakes_its_worker_when_due(
    live: Live, chat_settings, clock, sms: RecordingSms, fake_gemini, redis_client, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(status=503), Script(status=503), Script(chunks=["third ", "time"]))
    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(chat_settings, clock, idle_poll_seconds=NEVER):
        await listening_for_notices(redis_client)
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
    await redis_client.zadd(default_queue_name, {reply_job_id(uuid.UUID(reply_id)): due_at_ms})
    async with running_worker(chat_settings, clock, idle_poll_seconds=0.2):
        assert (await wait_finished(pg, reply_id, timeout=10))["status"] == "complete"


async def test_enqueue_announces_each_new_job_once(redis_client) -> None:
    queue = ArqRedis(connection_pool=redis_client.connection_pool)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(WAKE_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    reply_id = uuid.uuid4()

    assert await enqueue_reply(queue, reply_id) is True
    assert await enqueue_reply(queue, reply_id) is False  # one job per reply

    notices = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
        notices.append(message["channel"])
    assert notices == [WAKE_CHANNEL.encode()]
    assert await redis_client.zscore(default_queue_name, reply_job_id(reply_id)) is not None
    await pubsub.aclose()


async def test_a_reply_whose_job_was_never_queued_is_queued_again(
    live: Live, chat_settings, clock, sms: RecordingSms, redis_client, pg
) -> None:
    """sendMessage's process dying between its commit and its enqueue leaves a PENDING reply
    with no job: workers queue such replies again once they are old enough."""
    user, room_id = await user_with_room(live.http, sms)

    async def send_and_lose_its_job() -> str:
        reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]
        job_id = reply_job_id(uuid.UUID(reply_id))
        await redis_client.delete(f"arq:job:{job_id}")
        await redis_client.zrem(default_queue_name, job_id)
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
    assert not await redis_client.exists(f"arq:job:{reply_job_id(uuid.UUID(recent))}")
