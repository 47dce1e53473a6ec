"""`gemini-graphql serve --workers 2`: two api processes on one port, each with its own
relay connection, and a worker process. Connections land on both processes (the kernel
spreads them); subscriptions, events, stops and caches behave as with one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from gemini_graphql.config import Settings
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script
from gemini_graphql.testing.processes import Process, start_api, start_worker
from tests.chat_harness import WsClient, send, subscribe, user_with_room
from tests.conftest import GraphQLClient
from tests.test_stop_reply import stop

EVENTS = "subscription { chatroomEvents { type chatroomId message { id status } } }"
ROOMS = "query { chatrooms(first: 5) { edges { node { id title } } } }"
RENAME = """mutation($id: ID!, $t: String!) { updateChatroom(input: {id: $id, title: $t}) {
  errors { code } } }"""
DEVICES = 12  # connections of one user: enough that both processes hold some


@contextlib.asynccontextmanager
async def two_processes(
    settings: Settings, redis_client, metrics_dir: Path
) -> AsyncIterator[tuple[str, Process]]:
    (api, url), worker = await asyncio.gather(
        start_api(
            settings,
            args=("serve", "--workers", "2", "--port"),
            env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        ),
        start_worker(settings, redis_client),
    )
    try:
        yield url, api
    finally:
        await asyncio.gather(api.stop(), worker.stop())


def processes_holding_websockets(metrics_dir: Path) -> set[str]:
    """The api processes with a websocket open: each keeps its live gauges in a file."""
    holding = set()
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == "gemini_graphql_websockets_open" and any(
                sample.value > 0 for sample in metric.samples
            ):
                holding.add(path.name)
    return holding


async def fresh_query(url: str, token: str, query: str) -> dict:
    """On a connection of its own, so that either process may answer."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await GraphQLClient(http)(query, token=token)


async def test_subscriptions_events_stops_and_caches_across_two_processes(
    chat_settings: Settings,
    fake_gemini: tuple[FakeGemini, str],
    redis_client,
    pg,
    make_client,
    sms,
    tmp_path: Path,
) -> None:
    fake, _ = fake_gemini
    # Watchers, streams and stopped streams open at once: 3 × DEVICES sockets of one user.
    settings = replace(chat_settings, max_websockets_per_user=3 * DEVICES)
    async with two_processes(settings, redis_client, tmp_path) as (url, _):
        ws_url = url.replace("http://", "ws://") + "/graphql"
        user, room_id = await user_with_room(GraphQLClient(await make_client()), sms)
        await pg.execute(
            "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
        )
        # Caches: every process keeps the room list it answered...
        for _ in range(DEVICES):
            body = await fresh_query(url, user.token, ROOMS)
            assert body["data"]["chatrooms"]["edges"][0]["node"]["title"] == "Room"

        async with contextlib.AsyncExitStack() as devices:
            watchers = [
                await devices.enter_async_context(subscribe(ws_url, user.token, EVENTS))
                for _ in range(DEVICES)
            ]
            assert len(processes_holding_websockets(tmp_path)) == 2
            # ...and a rename through either drops both copies; every device hears of it
            # (renamed again until each subscription, live a moment after it is sent, has).
            waiting, title = set(range(DEVICES)), ""
            async with asyncio.timeout(20):
                for attempt in range(1000):
                    if not waiting:
                        break
                    title = f"Renamed {attempt}"
                    await fresh_query_rename(url, user.token, room_id, title)
                    for index in sorted(waiting):
                        with contextlib.suppress(TimeoutError):
                            event = await next_of(watchers[index], "CHATROOM_UPDATED", 0.3)
                            assert event["chatroomId"] == room_id
                            waiting.discard(index)
            for _ in range(DEVICES):
                body = await fresh_query(url, user.token, ROOMS)
                assert body["data"]["chatrooms"]["edges"][0]["node"]["title"] == title

            # A reply streamed to a subscriber on every connection, identical everywhere.
            fake.script(Script(chunks=[f"w{i} " for i in range(8)], delay=0.01))
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                sent = await send(GraphQLClient(http), user.token, room_id, "to all devices")
            reply_id = sent["reply"]["id"]
            texts = await asyncio.gather(
                *(stream_on_new_connection(ws_url, user.token, reply_id) for _ in range(DEVICES))
            )
            assert set(texts) == {"".join(f"w{i} " for i in range(8))}
            for watcher in watchers:
                finished = await next_of(watcher, "REPLY_FINISHED")
                assert finished["message"] == {"id": reply_id, "status": "COMPLETE"}

            # A stop sent to either process ends the reply for subscribers on both.
            fake.script(Script(chunks=[f"s{i} " for i in range(400)], delay=0.02))
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                gql = GraphQLClient(http)
                sent = await send(gql, user.token, room_id, "stop me")
                reply_id = sent["reply"]["id"]
                clients = [
                    await devices.enter_async_context(WsClient.connect(ws_url, user.token))
                    for _ in range(DEVICES)
                ]
                op_ids = [await client.start(reply_id) for client in clients]
                for client, op_id in zip(clients, op_ids, strict=True):
                    assert (await client.collect(op_id, limit=2)).events  # streaming
                stopped = await stop(gql, user.token, reply_id)
            assert stopped["errors"] == [] and stopped["message"]["status"] == "STOPPED"
            results = await asyncio.gather(
                *(client.collect(op_id) for client, op_id in zip(clients, op_ids, strict=True))
            )
            for result in results:
                assert result.completed and result.events[-1]["status"] == "STOPPED"
                assert result.events[-1]["message"]["content"] == stopped["message"]["content"]
    assert len(fake.requests) == 2


async def fresh_query_rename(url: str, token: str, room_id: str, title: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        body = await GraphQLClient(http)(RENAME, {"id": room_id, "t": title}, token=token)
    assert body["data"]["updateChatroom"]["errors"] == []


async def next_of(watcher, kind: str, timeout: float = 15) -> dict:
    while True:
        event = (await watcher.next(timeout=timeout))["chatroomEvents"]
        if event["type"] == kind:
            return event


async def stream_on_new_connection(ws_url: str, token: str, reply_id: str) -> str:
    async with WsClient.connect(ws_url, token) as client:
        result = await client.collect(await client.start(reply_id))
    assert result.completed, result
    return result.text
