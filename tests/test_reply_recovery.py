"""No reply left behind: replies nobody works on are found at any age and resumed (or, when
too old, failed with their unit given back), and a subscriber never waits forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from gemini_graphql.app.http_app import create_app
from gemini_graphql.chat.replies import LEASE_MARGIN, STRANDED_GIVE_UP_AFTER
from gemini_graphql.chat.reply_queue import reply_job_id
from gemini_graphql.chat.reply_stream import ReplyChannels, StreamEvent, publish
from gemini_graphql.config import Settings
from gemini_graphql.models import MessageStatus
from gemini_graphql.testing.fakes.gemini import Script
from tests.auth_flows import login
from tests.chat_harness import Live, WsClient, running_worker, send, stream, user_with_room
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve
from tests.test_replies import wait_finished


async def strand(
    live: Live,
    redis_client,
    channels: ReplyChannels,
    pg,
    token: str,
    room_id: str,
    *,
    streamed: list[str],
) -> str:
    """A reply whose worker died after sending `streamed`, and whose job Redis then lost."""
    reply_id = (await send(live.http, token, room_id, "tell me"))["reply"]["id"]
    job_id = reply_job_id(channels.names, uuid.UUID(reply_id))
    await redis_client.delete(f"arq:job:{job_id}")
    await redis_client.zrem(channels.names.arq_queue, job_id)
    for seq, delta in enumerate(streamed, start=1):
        await publish(
            redis_client,
            channels,
            uuid.UUID(reply_id),
            StreamEvent(seq, delta, MessageStatus.STREAMING),
        )
    await pg.execute(
        "UPDATE messages SET status = 'streaming', content = $2 WHERE id = $1",
        uuid.UUID(reply_id),
        "".join(streamed),
    )
    return reply_id


async def test_streaming_replies_whose_worker_is_gone_are_resumed_or_failed(
    live: Live,
    chat_settings: Settings,
    clock: FakeClock,
    sms: RecordingSms,
    redis_client,
    reply_channels: ReplyChannels,
    pg,
    fake_gemini,
) -> None:
    fake, _ = fake_gemini
    fake.default = Script(chunks=["and ", "done."])
    user, room_id = await user_with_room(live.http, sms)
    ancient = await strand(
        live, redis_client, reply_channels, pg, user.token, room_id, streamed=["long ", "ago "]
    )
    ancient_day = clock.now.date()
    clock.advance(seconds=STRANDED_GIVE_UP_AFTER.total_seconds() + 60)
    user = await login(live.http, sms, user.number)  # the first token has expired meanwhile
    lost = await strand(
        live, redis_client, reply_channels, pg, user.token, room_id, streamed=["half ", "way "]
    )
    clock.advance(
        seconds=chat_settings.worker_job_timeout_seconds + LEASE_MARGIN.total_seconds() + 5
    )
    alive = await strand(
        live, redis_client, reply_channels, pg, user.token, room_id, streamed=["still "]
    )
    used_before = await pg.fetchval(
        "SELECT daily_message_count FROM users WHERE id = $1", uuid.UUID(user.user_id)
    )

    async with running_worker(chat_settings, clock, idle_poll_seconds=0.2):
        resumed = await wait_finished(pg, lost, timeout=15)
        failed = await wait_finished(pg, ancient, timeout=15)
        await asyncio.sleep(0.5)
    # Resumed from what its subscribers had been sent, and finished once.
    assert (resumed["status"], resumed["content"]) == ("complete", "half way and done.")
    seen = await stream(live.ws_url, user.token, lost)
    assert seen.completed and seen.text == "half way and done."
    # Too old to be worth finishing: failed readably, its text kept, its unit given back.
    assert failed["status"] == "failed" and failed["content"] == "long ago "
    assert failed["error"] == "The assistant could not finish this reply."
    # A reply whose row moved recently may still have a live worker: left alone.
    row = await pg.fetchrow("SELECT status FROM messages WHERE id = $1", uuid.UUID(alive))
    assert row["status"] == "streaming"
    used = await pg.fetchval(
        "SELECT daily_message_count FROM users WHERE id = $1", uuid.UUID(user.user_id)
    )
    # The unit comes back to the day it was spent on (when that is still today).
    assert used == used_before - (1 if ancient_day == clock.now.date() else 0)


@pytest.fixture
async def impatient(
    chat_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> AsyncIterator[Live]:
    """An app whose subscribers give up on a reply after one quiet second."""
    settings = replace(chat_settings, stream_idle_timeout_seconds=1.0)
    app = create_app(settings, clock=clock, sms=sms)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield Live(
            http=GraphQLClient(http), ws_url=url.replace("http://", "ws://") + "/graphql", app=app
        )


async def test_a_subscriber_is_told_when_a_reply_makes_no_progress(
    impatient: Live, sms: RecordingSms
) -> None:
    user, room_id = await user_with_room(impatient.http, sms)
    reply_id = (await send(impatient.http, user.token, room_id))["reply"]["id"]  # no worker runs
    async with WsClient.connect(impatient.ws_url, user.token) as client:
        result = await client.collect(await client.start(reply_id), timeout=10)
    assert not result.completed and result.events == []
    [error] = result.errors
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert "no progress for 1 seconds (status PENDING)" in error["message"]
    assert "after: 0" in error["message"]


async def test_a_subscriber_whose_stream_was_lost_gets_the_stored_end(
    impatient: Live, sms: RecordingSms, redis_client, reply_channels: ReplyChannels, pg
) -> None:
    """The stream vanished (Redis lost it) while someone listened; the reply then finished
    in the database. The subscriber gets the stored end instead of waiting forever."""
    user, room_id = await user_with_room(impatient.http, sms)
    reply_id = (await send(impatient.http, user.token, room_id))["reply"]["id"]
    await publish(
        redis_client,
        reply_channels,
        uuid.UUID(reply_id),
        StreamEvent(1, "Hello ", MessageStatus.STREAMING),
    )
    async with WsClient.connect(impatient.ws_url, user.token) as client:
        op = await client.start(reply_id)
        first = await client.collect(op, limit=1)
        await redis_client.delete(reply_channels.stream(uuid.UUID(reply_id)))
        await pg.execute(
            "UPDATE messages SET status = 'complete', content = 'Hello world' WHERE id = $1",
            uuid.UUID(reply_id),
        )
        rest = await client.collect(op, timeout=10)
    assert first.events[0]["delta"] == "Hello "
    assert rest.completed and [event["status"] for event in rest.events] == ["COMPLETE"]
    assert rest.events[0]["message"]["content"] == "Hello world"


async def test_a_stream_restarted_shorter_tells_the_subscriber_to_start_over(
    impatient: Live, sms: RecordingSms, redis_client, reply_channels: ReplyChannels
) -> None:
    """Redis lost the stream and a rerun began a new one from the stored text: a subscriber
    who had seen more cannot continue with `after`, and is told to start over."""
    user, room_id = await user_with_room(impatient.http, sms)
    reply_id = uuid.UUID((await send(impatient.http, user.token, room_id))["reply"]["id"])
    for seq, delta in enumerate(["a ", "b ", "c "], start=1):
        await publish(
            redis_client, reply_channels, reply_id, StreamEvent(seq, delta, MessageStatus.STREAMING)
        )
    async with WsClient.connect(impatient.ws_url, user.token) as client:
        op = await client.start(str(reply_id))
        await client.collect(op, limit=3)
        await redis_client.delete(reply_channels.stream(reply_id))
        await publish(
            redis_client, reply_channels, reply_id, StreamEvent(1, "a ", MessageStatus.STREAMING)
        )
        rest = await client.collect(op, timeout=10)
    assert not rest.completed and "from its start" in rest.errors[0]["message"]
