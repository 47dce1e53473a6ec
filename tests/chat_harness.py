"""Fixtures and helpers for the chat tests: a fake Gemini, an arq worker, a live server,
and a graphql-transport-ws client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import websockets
from arq.worker import Worker
from websockets.exceptions import ConnectionClosed

from gemini_graphql.app.http_app import create_app
from gemini_graphql.app.worker import build_worker
from gemini_graphql.config import Settings
from gemini_graphql.testing.fakes.gemini import API_KEY, FakeGemini
from tests.auth_flows import LoggedIn, login
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve

CREATE_ROOM = """
mutation($input: CreateChatroomInput!) {
  createChatroom(input: $input) { chatroom { id title description createdAt updatedAt } errors { code field message } }
}"""
SEND = """
mutation($input: SendMessageInput!) {
  sendMessage(input: $input) {
    message { id chatroomId role content status createdAt }
    reply { id chatroomId role content status error }
    usage { used limit remaining resetsAt }
    errors { code field message }
  }
}"""
STREAM = """
subscription($id: ID!, $after: Int) {
  messageStream(messageId: $id, after: $after) {
    messageId seq delta status message { id content status error role }
  }
}"""
ROOM_MESSAGES = """
query($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  chatroom(id: $id) {
    id title
    messages(first: $first, after: $after, last: $last, before: $before) {
      edges { cursor node { id role content status error } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}"""


@pytest.fixture
async def fake_gemini() -> AsyncIterator[tuple[FakeGemini, str]]:
    fake = FakeGemini()
    async with serve(fake.app) as url:
        yield fake, url


@pytest.fixture
def chat_settings(base_settings: Settings, fake_gemini: tuple[FakeGemini, str]) -> Settings:
    return replace(
        base_settings,
        gemini_api_key=API_KEY,
        gemini_base_url=fake_gemini[1],
        gemini_timeout_seconds=1.0,
        gemini_retry_base_seconds=0.05,
    )


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[Worker]:
    worker = build_worker(
        settings, handle_signals=False, **({"clock": clock} if clock else {}), **options
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def worker(chat_settings: Settings, clock: FakeClock) -> AsyncIterator[Worker]:
    async with running_worker(chat_settings, clock) as running:
        yield running


@dataclass
class Live:
    http: GraphQLClient
    ws_url: str
    app: Any


@pytest.fixture
async def live(chat_settings: Settings, sms: RecordingSms, clock: FakeClock) -> AsyncIterator[Live]:
    app = create_app(chat_settings, clock=clock, sms=sms)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield Live(
            http=GraphQLClient(http),
            ws_url=url.replace("http://", "ws://") + "/graphql",
            app=app,
        )


@dataclass
class StreamResult:
    events: list[dict[str, Any]]
    errors: list[dict[str, Any]] | None
    completed: bool

    @property
    def text(self) -> str:
        return "".join(event["delta"] for event in self.events)


class WsClient:
    """A graphql-transport-ws connection, authenticated in connection_init."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self._ids = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, token: str) -> AsyncIterator[WsClient]:
        async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as socket:
            await socket.send(
                json.dumps(
                    {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
                )
            )
            ack = json.loads(await asyncio.wait_for(socket.recv(), 5))
            assert ack["type"] == "connection_ack", ack
            yield cls(socket)

    async def start(self, message_id: str, after: int | None = None) -> str:
        self._ids += 1
        op_id = str(self._ids)
        variables: dict[str, Any] = {"id": message_id}
        if after is not None:
            variables["after"] = after
        await self.socket.send(
            json.dumps(
                {
                    "id": op_id,
                    "type": "subscribe",
                    "payload": {"query": STREAM, "variables": variables},
                }
            )
        )
        return op_id

    async def collect(
        self, op_id: str, *, limit: int | None = None, timeout: float = 15
    ) -> StreamResult:
        """Messages of one operation until it completes (or `limit` events arrived)."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.socket.recv())
                if message.get("id") != op_id:
                    continue
                if message["type"] == "next":
                    payload = message["payload"]
                    if payload.get("errors"):
                        return StreamResult(events, payload["errors"], False)
                    events.append(payload["data"]["messageStream"])
                    if limit is not None and len(events) >= limit:
                        return StreamResult(events, None, False)
                elif message["type"] == "error":
                    return StreamResult(events, message["payload"], False)
                elif message["type"] == "complete":
                    return StreamResult(events, None, True)

    async def collect_all(self, op_ids: list[str], timeout: float = 30) -> dict[str, StreamResult]:
        """Several operations of this connection, until each completes."""
        results = {op_id: StreamResult([], None, False) for op_id in op_ids}
        pending = set(op_ids)
        async with asyncio.timeout(timeout):
            while pending:
                message = json.loads(await self.socket.recv())
                result = results.get(message.get("id", ""))
                if result is None:
                    continue
                if message["type"] == "next":
                    result.events.append(message["payload"]["data"]["messageStream"])
                elif message["type"] in ("complete", "error"):
                    result.completed = message["type"] == "complete"
                    pending.discard(message["id"])
        return results

    async def stop(self, op_id: str) -> None:
        await self.socket.send(json.dumps({"id": op_id, "type": "complete"}))


async def stream(url: str, token: str, message_id: str, after: int | None = None) -> StreamResult:
    async with WsClient.connect(url, token) as client:
        return await client.collect(await client.start(message_id, after))


async def create_room(gql: GraphQLClient, token: str, title: str = "Room") -> str:
    body = await gql(CREATE_ROOM, {"input": {"title": title}}, token=token)
    payload = body["data"]["createChatroom"]
    assert payload["errors"] == [], payload
    return payload["chatroom"]["id"]


async def send(
    gql: GraphQLClient, token: str, room_id: str, content: str = "Hello there"
) -> dict[str, Any]:
    body = await gql(SEND, {"input": {"chatroomId": room_id, "content": content}}, token=token)
    return body["data"]["sendMessage"]


async def user_with_room(gql: GraphQLClient, sms: RecordingSms) -> tuple[LoggedIn, str]:
    user = await login(gql, sms)
    return user, await create_room(gql, user.token)


PROTOCOL = "graphql-transport-ws"


@pytest.fixture
async def ws_url(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> AsyncIterator[str]:
    """An app without a worker, behind a real uvicorn server: its websocket URL."""
    async with serve(create_app(base_settings, clock=clock, sms=sms)) as base:
        yield base.replace("http://", "ws://") + "/graphql"


async def closed_with(socket: websockets.ClientConnection) -> int:
    """The close code the server ends the connection with."""
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(socket.recv(), 15)
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code


class Subscription:
    """One subscription of any document on its own graphql-transport-ws connection."""

    def __init__(self, client: WsClient, op_id: str) -> None:
        self._client = client
        self.op_id = op_id

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next result's data (its errors raise AssertionError)."""
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self._client.socket.recv())
                if message.get("id") != self.op_id:
                    continue
                assert message["type"] == "next", message
                payload = message["payload"]
                assert not payload.get("errors"), payload
                return payload["data"]

    async def first_message(self, timeout: float = 10) -> dict[str, Any]:
        """The next message of the operation as sent: next, error or complete."""
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self._client.socket.recv())
                if message.get("id") == self.op_id:
                    return message


@contextlib.asynccontextmanager
async def subscribe(
    url: str, token: str, query: str, variables: dict[str, Any] | None = None
) -> AsyncIterator[Subscription]:
    async with WsClient.connect(url, token) as client:
        await client.socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": query, "variables": variables or {}},
                }
            )
        )
        yield Subscription(client, "1")
