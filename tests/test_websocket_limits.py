"""What one socket and one account may hold: operations per connection (the next subscribe
gets an `error`, and a finished one frees its place), and open websockets per user across
every api process (the next closes with 4429 at connection_init; closing one, or a process
dying, frees the place)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.infra import leases as leases_module
from gemini_graphql.infra.leases import Leases
from tests.auth_flows import LoggedIn, login
from tests.chat_harness import PROTOCOL, closed_with, create_room, send
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve


async def connect(url: str, token: str) -> websockets.ClientConnection:
    socket = await websockets.connect(url, subprotocols=[PROTOCOL])
    await socket.send(
        json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    )
    return socket


async def acked(url: str, token: str) -> websockets.ClientConnection:
    socket = await connect(url, token)
    assert json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "connection_ack"
    return socket


@pytest.fixture
async def two_processes(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> AsyncIterator[tuple[list[str], GraphQLClient, Settings]]:
    """Two api servers (apps with their own connections, sharing only Redis and PostgreSQL,
    as two processes do) with small caps."""
    settings = replace(base_settings, max_websockets_per_user=3, max_operations_per_connection=4)
    async with AsyncExitStack() as stack:
        urls = [
            await stack.enter_async_context(serve(create_app(settings, clock=clock, sms=sms)))
            for _ in range(2)
        ]
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=urls[0], timeout=10))
        yield (
            [url.replace("http://", "ws://") + "/graphql" for url in urls],
            GraphQLClient(http),
            settings,
        )


async def test_operations_per_connection_are_capped_and_a_finished_one_frees_its_place(
    two_processes, sms: RecordingSms
) -> None:
    (url, _), gql, settings = two_processes
    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    reply = (await send(gql, user.token, room))["reply"]["id"]  # no worker: it stays PENDING
    stream = 'subscription { messageStream(messageId: "%s") { seq } }' % reply
    socket = await acked(url, user.token)
    for index in range(settings.max_operations_per_connection):
        await socket.send(
            json.dumps({"id": str(index), "type": "subscribe", "payload": {"query": stream}})
        )
    await asyncio.sleep(0.3)
    await socket.send(
        json.dumps({"id": "extra", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    )
    refused = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert refused["id"] == "extra" and refused["type"] == "error"
    assert refused["payload"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "at most 4 at once" in refused["payload"][0]["message"]

    await socket.send(json.dumps({"id": "0", "type": "complete"}))  # the client stops one
    await asyncio.sleep(0.2)
    await socket.send(
        json.dumps({"id": "next", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    )
    answered = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert answered == {"id": "next", "type": "next", "payload": {"data": {"__typename": "Query"}}}
    await socket.close()


async def test_open_websockets_per_user_are_capped_across_processes(
    two_processes, sms: RecordingSms
) -> None:
    urls, gql, settings = two_processes
    user: LoggedIn = await login(gql, sms)
    other = await login(gql, sms)
    # 3 allowed, spread over both processes.
    sockets = [
        await acked(urls[0], user.token),
        await acked(urls[1], user.token),
        await acked(urls[0], user.token),
    ]
    for url in urls:  # the fourth is refused on either process
        refused = await connect(url, user.token)
        assert await closed_with(refused) == 4429
    assert (await acked(urls[1], other.token)) is not None  # another user is not affected

    await sockets[1].close()  # closing one frees its place, for either process
    async with asyncio.timeout(5):  # the server lets go of the lease as the socket ends
        while True:
            socket = await connect(urls[0], user.token)
            try:
                assert json.loads(await socket.recv())["type"] == "connection_ack"
                break
            except ConnectionClosed:
                await asyncio.sleep(0.05)
    refused = await connect(urls[1], user.token)
    assert await closed_with(refused) == 4429
    for open_socket in (sockets[0], sockets[2], socket):
        await open_socket.close()


async def test_leases_of_a_dead_process_lapse_and_renewed_ones_do_not(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_module, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(leases_module, "RENEW_SECONDS", 0.2)
    dead = Leases(redis_client, "test-leases", limit=2)
    alive = Leases(redis_client, "test-leases", limit=2)
    try:
        assert await dead.take("u") is not None
        await dead.close()  # the process is gone: nobody renews or releases its lease
        kept = await alive.take("u")
        assert kept is not None
        assert await alive.take("u") is None  # 2 held: the dead one still counts, for now
        await asyncio.sleep(1.5)
        assert await alive.take("u") is not None  # it lapsed; the renewed one did not
        assert await alive.take("u") is None
        await alive.release(kept)
        assert await alive.take("u") is not None
    finally:
        await alive.close()
        await redis_client.delete("test-leases:u")
