"""The graphql-transport-ws protocol rules, against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.auth_flows import login
from tests.chat_harness import PROTOCOL, closed_with, create_room
from tests.chat_harness import send as send_message
from tests.conftest import GraphQLClient, RecordingSms

ME = "{ me { id tier } }"
STREAM = 'subscription { messageStream(messageId: "%s") { seq } }'


async def acknowledged(
    url: str, gql: GraphQLClient, sms: RecordingSms
) -> websockets.ClientConnection:
    user = await login(gql, sms)
    socket = await websockets.connect(url, subprotocols=[PROTOCOL])
    await socket.send(
        json.dumps(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}
        )
    )
    assert json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "connection_ack"
    return socket


async def send(socket: websockets.ClientConnection, message: dict[str, Any]) -> None:
    await socket.send(json.dumps(message))


async def receive(socket: websockets.ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(socket.recv(), 5))


async def test_subscribe_before_init_is_4401(ws_url: str) -> None:
    socket = await websockets.connect(ws_url, subprotocols=[PROTOCOL])
    await send(socket, {"id": "1", "type": "subscribe", "payload": {"query": ME}})
    assert await closed_with(socket) == 4401


async def test_a_second_init_is_4429(ws_url: str, gql: GraphQLClient, sms: RecordingSms) -> None:
    socket = await acknowledged(ws_url, gql, sms)
    await send(socket, {"type": "connection_init", "payload": {}})
    assert await closed_with(socket) == 4429


async def test_ping_is_answered_with_pong(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    socket = await acknowledged(ws_url, gql, sms)
    await send(socket, {"type": "ping"})
    assert (await receive(socket))["type"] == "pong"
    await send(socket, {"type": "pong"})  # unsolicited pongs are fine
    await send(socket, {"type": "ping"})
    assert (await receive(socket))["type"] == "pong"
    await socket.close()


async def test_malformed_messages_are_4400(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    for bad in (
        "not json",
        "[]",
        '{"type": 5}',
        '{"type": "shout"}',
        '{"type": "subscribe", "id": "1"}',
        '{"type": "subscribe", "id": "1", "payload": {"query": 5}}',
        '{"type": "subscribe", "id": "1", "payload": {"query": "{ me { id } }", "variables": []}}',
    ):
        socket = await acknowledged(ws_url, gql, sms)
        await socket.send(bad)
        assert await closed_with(socket) == 4400, bad


async def test_a_duplicate_operation_id_is_4409_and_complete_frees_it(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    reply = (await send_message(gql, user.token, room))["reply"]["id"]  # no worker: stays PENDING
    socket = await websockets.connect(ws_url, subprotocols=[PROTOCOL])
    await send(
        socket, {"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}
    )
    assert (await receive(socket))["type"] == "connection_ack"
    subscribe = {"id": "s", "type": "subscribe", "payload": {"query": STREAM % reply}}
    await send(socket, subscribe)
    await send(socket, {"id": "s", "type": "complete"})  # the client stops it...
    await asyncio.sleep(0.2)
    await send(socket, subscribe)  # ...so the id can be used again
    await send(socket, {"type": "ping"})
    assert (await receive(socket))["type"] == "pong"  # still open: no 4409 so far
    await send(socket, subscribe)  # now "s" is alive
    assert await closed_with(socket) == 4409


async def test_queries_and_errors_over_the_socket(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    socket = await acknowledged(ws_url, gql, sms)
    await send(socket, {"id": "q", "type": "subscribe", "payload": {"query": ME}})
    answer = await receive(socket)
    assert answer["type"] == "next" and answer["payload"]["data"]["me"]["tier"] == "BASIC"
    assert await receive(socket) == {"id": "q", "type": "complete"}
    await send(socket, {"id": "bad", "type": "subscribe", "payload": {"query": "{ nope }"}})
    refused = await receive(socket)
    assert (
        refused["type"] == "error" and refused["payload"][0]["extensions"]["code"] == "BAD_REQUEST"
    )
    await send(
        socket,
        {
            "id": "vars",
            "type": "subscribe",
            "payload": {
                "query": "subscription($id: ID!) { messageStream(messageId: $id) { seq } }",
                "variables": {},
            },
        },
    )
    coerced = await receive(socket)
    assert (
        coerced["type"] == "next"
        and coerced["payload"]["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    )
    assert (await receive(socket))["type"] == "complete"
    await socket.close()


def test_text_frames_are_framed_as_websockets_frames_them() -> None:
    """The server frames text messages itself (web/websocket_protocol.text_frame): byte for byte what
    websockets would send, and read back whole by websockets' own client parser, at each
    length encoding (7-bit, 16-bit, 64-bit)."""
    from websockets.frames import Frame, Opcode
    from websockets.protocol import Protocol, Side, State
    from websockets.server import ServerProtocol

    from gemini_graphql.web.websocket_protocol import text_frame

    server = ServerProtocol()
    server.state = State.OPEN
    client = Protocol(Side.CLIENT, max_size=None)  # reads frames from the first byte
    for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        payload = ("é" * size).encode()[:size]
        payload = payload.decode(errors="ignore").encode()  # whole characters only
        server.send_text(payload)
        assert text_frame(payload) == b"".join(server.data_to_send())
        client.receive_data(text_frame(payload))
        [event] = client.events_received()
        assert isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin
        assert event.data == payload
