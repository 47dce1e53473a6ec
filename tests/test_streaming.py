"""messageStream: catching up, resuming, fan-out, expiry, ownership, and connection use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.testing.fakes.gemini import Script
from tests.auth_flows import login
from tests.chat_harness import (
    Live,
    WsClient,
    running_worker,
    send,
    stream,
    user_with_room,
)
from tests.conftest import RecordingSms

CHUNKS = ["The ", "quick ", "brown ", "fox ", "jumps"]


async def finished_reply(live: Live, sms: RecordingSms, fake, pg) -> tuple[str, str]:
    fake.script(Script(chunks=CHUNKS))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    reply_id = sent["reply"]["id"]
    async with asyncio.timeout(10):
        while (
            await pg.fetchval("SELECT status FROM messages WHERE id = $1", uuid.UUID(reply_id))
            != "complete"
        ):
            await asyncio.sleep(0.02)
    return user.token, reply_id


async def test_late_subscriber_gets_everything(live: Live, worker, sms, fake_gemini, pg) -> None:
    token, reply_id = await finished_reply(live, sms, fake_gemini[0], pg)
    result = await stream(live.ws_url, token, reply_id)
    assert result.completed
    assert [e["seq"] for e in result.events] == [1, 2, 3, 4, 5, 6]
    assert result.text == "".join(CHUNKS)


async def test_resubscribe_with_after_skips_what_was_seen(
    live: Live, worker, sms, fake_gemini, pg
) -> None:
    token, reply_id = await finished_reply(live, sms, fake_gemini[0], pg)
    result = await stream(live.ws_url, token, reply_id, after=3)
    assert [e["seq"] for e in result.events] == [4, 5, 6]
    assert result.text == "".join(CHUNKS[3:])
    for after in (6, 100):
        beyond = await stream(live.ws_url, token, reply_id, after=after)
        assert beyond.events == [] and beyond.completed


async def test_live_subscribers_and_a_dropped_connection(
    live: Live, worker, sms, fake_gemini
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=[f"w{i} " for i in range(20)], delay=0.03))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    reply_id = sent["reply"]["id"]

    async def dropper() -> str:
        async with WsClient.connect(live.ws_url, user.token) as client:
            first = await client.collect(await client.start(reply_id), limit=5)
        # The connection dropped; come back with the last seq seen.
        rest = await stream(live.ws_url, user.token, reply_id, after=first.events[-1]["seq"])
        return first.text + rest.text

    one, two, resumed = await asyncio.gather(
        stream(live.ws_url, user.token, reply_id),
        stream(live.ws_url, user.token, reply_id),
        dropper(),
    )
    expected = "".join(f"w{i} " for i in range(20))
    assert one.text == two.text == resumed == expected
    assert [e["seq"] for e in one.events] == list(range(1, 22))


async def test_expired_stream_is_replayed_from_the_database(
    live: Live, worker, sms, fake_gemini, pg, redis_client, reply_channels: ReplyChannels
) -> None:
    token, reply_id = await finished_reply(live, sms, fake_gemini[0], pg)
    await redis_client.delete(reply_channels.stream(uuid.UUID(reply_id)))
    result = await stream(live.ws_url, token, reply_id)
    assert result.completed and len(result.events) == 1
    [event] = result.events
    assert (event["seq"], event["delta"], event["status"]) == (1, "".join(CHUNKS), "COMPLETE")
    assert event["message"]["content"] == "".join(CHUNKS)
    resumed = await stream(live.ws_url, token, reply_id, after=3)
    assert [(e["seq"], e["delta"]) for e in resumed.events] == [(4, "")]
    assert resumed.events[0]["message"]["content"] == "".join(CHUNKS)


async def test_foreign_unknown_and_user_messages_are_not_found(live: Live, sms, pg) -> None:
    owner, room_id = await user_with_room(live.http, sms)
    other = await login(live.http, sms)
    sent = await send(live.http, owner.token, room_id)
    for token, target in [
        (other.token, sent["reply"]["id"]),
        (owner.token, str(uuid.uuid4())),
        (owner.token, "garbage"),
        (owner.token, sent["message"]["id"]),
    ]:
        result = await stream(live.ws_url, token, target)
        assert result.events == []
        assert result.errors and result.errors[0]["extensions"]["code"] == "NOT_FOUND", (
            result.errors
        )


async def test_one_pubsub_connection_for_many_subscribers(
    live: Live, sms, pg, redis_client, chat_settings, clock, fake_gemini
) -> None:
    user, room_id = await user_with_room(live.http, sms)
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    replies = []
    for batch in range(10):
        sent = await asyncio.gather(
            *(send(live.http, user.token, room_id, f"m{batch}-{i}") for i in range(20))
        )
        replies += [payload["reply"]["id"] for payload in sent]
    name = f"gemini-graphql:api:{os.getpid()}"

    async def connections() -> tuple[int, int]:
        clients = [c for c in await redis_client.client_list() if c.get("name") == name]
        return len(clients), sum(1 for c in clients if int(c.get("sub", 0)) > 0)

    relay = live.app.state.services.relay
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(WsClient.connect(live.ws_url, user.token))
            for _ in range(20)
        ]
        first = await sockets[0].start(replies[0])
        async with asyncio.timeout(5):
            while relay.channel_count < 1:
                await asyncio.sleep(0.01)
        with_one = await connections()
        operations: dict[int, list[str]] = {0: [first]}
        for index, reply_id in enumerate(replies[1:], start=1):
            operations.setdefault(index % 20, []).append(await sockets[index % 20].start(reply_id))
        async with asyncio.timeout(10):
            while relay.channel_count < 200:
                await asyncio.sleep(0.01)
        with_200 = await connections()
        print(
            f"\nRedis connections of the api process: 1 subscription {with_one}, 200 subscriptions {with_200}"
        )
        assert with_one[1] == with_200[1] == 1  # exactly one pub/sub connection
        assert with_200[0] <= chat_settings.redis_max_connections

        # All 200 are live: a worker now answers them, every stream completes.
        async with running_worker(chat_settings, clock):
            per_socket = await asyncio.gather(
                *(sockets[index].collect_all(ops, timeout=60) for index, ops in operations.items())
            )
        results = [result for found in per_socket for result in found.values()]
        assert len(results) == 200
        assert all(result.completed and result.text.startswith("Echo: m") for result in results)
    async with asyncio.timeout(5):  # everyone left: every channel released
        while relay.channel_count:
            await asyncio.sleep(0.01)


async def test_a_subscriber_that_leaves_releases_its_channel(live: Live, sms) -> None:
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    relay = live.app.state.services.relay
    async with WsClient.connect(live.ws_url, user.token) as client:
        op = await client.start(sent["reply"]["id"])
        async with asyncio.timeout(5):
            while relay.channel_count < 1:
                await asyncio.sleep(0.01)
        await client.stop(op)
        async with asyncio.timeout(5):
            while relay.channel_count:
                await asyncio.sleep(0.01)
    async with WsClient.connect(live.ws_url, user.token) as client:
        await client.start(sent["reply"]["id"])
        async with asyncio.timeout(5):
            while relay.channel_count < 1:
                await asyncio.sleep(0.01)
    async with asyncio.timeout(5):  # the socket closed without a goodbye
        while relay.channel_count:
            await asyncio.sleep(0.01)
