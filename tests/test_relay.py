"""The relay's mailboxes (bytes, as published), the re-read it asks of quiet listeners, and
a reply's follower on top of it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from gemini_graphql.chat import reply_stream
from gemini_graphql.chat.reply_stream import ReplyChannels, StreamEvent, publish
from gemini_graphql.infra import relay as relay_module
from gemini_graphql.infra.relay import RESYNC, Mailbox, Relay
from gemini_graphql.models import MessageStatus


def event(seq: int) -> StreamEvent:
    return StreamEvent(seq, f"d{seq}", MessageStatus.STREAMING)


async def test_a_mailbox_hands_events_over_in_order_and_wakes_its_reader() -> None:
    mailbox = Mailbox(0.0)
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert mailbox.put(b"one", 1.0)
    assert mailbox.put(RESYNC, 1.0)
    assert mailbox.put(b"two", 1.0)
    assert await reader == b"one"
    assert await mailbox.get() is RESYNC
    assert await mailbox.get() == b"two"
    assert mailbox.last_put == 1.0


def test_a_full_mailbox_refuses_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "MAILBOX_SIZE", 3)
    mailbox = Mailbox(0.0)
    assert [mailbox.put(b"x", 0.0) for _ in range(5)] == [True, True, True, False, False]


async def test_live_events_reach_every_listener_of_a_channel(
    redis_client: aioredis.Redis, reply_channels: ReplyChannels
) -> None:
    relay = Relay(redis_client)
    message_id = uuid.uuid4()
    try:
        async with (
            relay.listen(reply_channels.of(message_id)) as first,
            relay.listen(reply_channels.of(message_id)) as second,
        ):
            await publish(redis_client, reply_channels, message_id, event(1))
            async with asyncio.timeout(5):
                assert await first.get() == event(1).encode().encode()
                assert await second.get() == event(1).encode().encode()
    finally:
        await relay.close()


async def test_a_burst_read_at_once_is_handed_over_whole_and_in_order(
    redis_client: aioredis.Redis, reply_channels: ReplyChannels
) -> None:
    """Messages published in one pipeline reach the relay in one socket read; those it takes
    from hiredis' buffer (Relay._buffered) arrive whole and in order, across channels, and a
    subscription confirmed in the middle of the burst still confirms."""
    relay = Relay(redis_client)
    first_id, second_id, late_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    burst = 500
    try:
        async with (
            relay.listen(reply_channels.of(first_id)) as first,
            relay.listen(reply_channels.of(second_id)) as second,
            redis_client.pipeline(transaction=False) as pipe,
        ):
            for index in range(burst):
                pipe.publish(reply_channels.of(first_id), b"f%d" % index)
                pipe.publish(reply_channels.of(second_id), b"s%d" % index)
            publishing = asyncio.ensure_future(pipe.execute())
            async with asyncio.timeout(5), relay.listen(reply_channels.of(late_id)) as late:
                await publishing
                await redis_client.publish(reply_channels.of(late_id), b"late")
                assert await late.get() == b"late"
                assert [await first.get() for _ in range(burst)] == [
                    b"f%d" % index for index in range(burst)
                ]
                assert [await second.get() for _ in range(burst)] == [
                    b"s%d" % index for index in range(burst)
                ]
    finally:
        await relay.close()


async def test_quiet_listeners_are_asked_to_reread(
    redis_client: aioredis.Redis, reply_channels: ReplyChannels
) -> None:
    relay = Relay(redis_client, resync_after=0.3)
    try:
        async with relay.listen(reply_channels.of(uuid.uuid4())) as mailbox:
            async with asyncio.timeout(5):
                assert await mailbox.get() is RESYNC
    finally:
        await relay.close()


async def test_a_reply_written_between_reading_and_checking_the_stream_is_not_lost(
    redis_client: aioredis.Redis, reply_channels: ReplyChannels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream was empty when read, and the whole reply (final event included) arrived
    before the end was checked: the subscriber must read again, not stop with nothing."""
    message_id = uuid.uuid4()
    real_history = reply_stream.history
    reads = 0

    async def history_written_just_after(
        redis: aioredis.Redis, channels: ReplyChannels, reply: uuid.UUID, after: int = 0
    ):
        nonlocal reads
        reads += 1
        if reads == 1:  # the worker writes everything right after this first read
            for seq in range(1, 4):
                await publish(redis, reply_channels, reply, event(seq))
            await publish(redis, reply_channels, reply, StreamEvent(4, "", MessageStatus.COMPLETE))
            return []
        return await real_history(redis, channels, reply, after)

    monkeypatch.setattr(reply_stream, "history", history_written_just_after)
    relay = Relay(redis_client)

    async def nothing_stored(_: int) -> StreamEvent | None:
        return None

    try:
        async with asyncio.timeout(5):
            followed = reply_stream.follow(
                redis_client, relay, reply_channels, message_id, 0, nothing_stored
            )
            seqs = [e.seq async for e in followed]
    finally:
        await relay.close()
    assert seqs == [1, 2, 3, 4]
