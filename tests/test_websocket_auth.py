"""Websocket authentication (graphql-transport-ws) against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.auth_flows import login
from tests.chat_harness import PROTOCOL, closed_with
from tests.conftest import GraphQLClient, RecordingSms


async def init(url: str, payload: object) -> websockets.ClientConnection:
    socket = await websockets.connect(url, subprotocols=[PROTOCOL])
    await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
    return socket


@pytest.mark.parametrize(
    "payload_of",
    [
        lambda token: {"authorization": f"Bearer {token}"},
        lambda token: {"Authorization": f"Bearer {token}"},
        lambda token: {"authToken": token},
        lambda token: {"authToken": f"Bearer {token}"},
    ],
    ids=["authorization", "Authorization", "authToken", "authToken-bearer"],
)
async def test_valid_token_is_acknowledged(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms, payload_of
) -> None:
    user = await login(gql, sms)
    async with await init(ws_url, payload_of(user.token)) as socket:
        assert json.loads(await asyncio.wait_for(socket.recv(), 5)) == {"type": "connection_ack"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "no token"),
        ({"authorization": "Bearer not-a-token"}, "token invalid"),
        ({"authorization": "Bearer"}, "token invalid"),  # "Bearer" is taken as the token
        ({"authToken": 12345}, "no token"),
        ({"authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}, "token invalid"),
    ],
)
async def test_bad_token_closes_with_4403_saying_why(
    ws_url: str, payload: object, reason: str
) -> None:
    socket = await init(ws_url, payload)
    assert await closed_because(socket) == (4403, f"Forbidden: {reason}")


async def test_expired_token_closes_with_4403_token_expired(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms, clock, base_settings
) -> None:
    user = await login(gql, sms)
    clock.advance(minutes=base_settings.access_token_expire_minutes, seconds=1)
    socket = await init(ws_url, {"authorization": f"Bearer {user.token}"})
    assert await closed_because(socket) == (4403, "Forbidden: token expired")


async def closed_because(socket: websockets.ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(socket.recv(), 15)
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code, caught.value.rcvd.reason


async def test_payload_that_is_not_an_object_is_a_protocol_error(ws_url: str) -> None:
    socket = await init(ws_url, "Bearer something")
    assert await closed_with(socket) == 4400


async def test_revoked_token_closes_with_4403(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    await gql(
        'mutation { changePassword(input: {newPassword: "a-new-password"}) { ok } }',
        token=user.token,
    )
    socket = await init(ws_url, {"authorization": f"Bearer {user.token}"})
    assert await closed_because(socket) == (4403, "Forbidden: token revoked")


async def test_no_connection_init_closes_with_4408(ws_url: str) -> None:
    socket = await websockets.connect(ws_url, subprotocols=[PROTOCOL])
    started = asyncio.get_running_loop().time()
    assert await closed_with(socket) == 4408
    assert 9 <= asyncio.get_running_loop().time() - started <= 14


async def test_unknown_subprotocol_is_refused(ws_url: str) -> None:
    socket = await websockets.connect(ws_url, subprotocols=["graphql-ws"])
    assert await closed_with(socket) == 4406
