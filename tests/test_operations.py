"""Running it: CORS, websocket origins, logs without secrets, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from dataclasses import replace

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import AppEnv
from gemini_graphql.logs import JsonFormatter
from gemini_graphql.testing.fakes.gemini import Script
from gemini_graphql.testing.processes import start_api, start_worker
from tests.auth_flows import ME, login
from tests.chat_harness import WsClient, send, user_with_room
from tests.conftest import GraphQLClient, RecordingSms
from tests.live import serve


async def preflight(client, origin: str):
    return await client.options(
        "/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_cors_for_configured_origins(make_client) -> None:
    client = await make_client(cors_origins=("https://app.example",))
    allowed = await preflight(client, "https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = await preflight(client, "https://evil.example")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    # Production does not let localhost pages in unless listed.
    assert (await preflight(client, "http://localhost:3000")).status_code == 400
    simple = await client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": "https://app.example"}
    )
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


async def test_dev_mode_allows_localhost_pages(make_client) -> None:
    client = await make_client(app_env=AppEnv.DEV)
    assert (await preflight(client, "http://localhost:5173")).status_code == 200
    assert (await preflight(client, "http://127.0.0.1:3000")).status_code == 200
    assert (await preflight(client, "https://evil.example")).status_code == 400


async def test_websocket_origin_is_checked(base_settings, sms: RecordingSms, clock) -> None:
    settings = replace(base_settings, cors_origins=("https://app.example",))
    async with serve(create_app(settings, clock=clock, sms=sms)) as url:
        ws_url = url.replace("http://", "ws://") + "/graphql"
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(
                ws_url, subprotocols=["graphql-transport-ws"], origin="https://evil.example"
            )
        assert refused.value.response.status_code == 403
        ok = await websockets.connect(
            ws_url, subprotocols=["graphql-transport-ws"], origin="https://app.example"
        )
        await ok.close()
        no_origin = await websockets.connect(
            ws_url, subprotocols=["graphql-transport-ws"]
        )  # not a browser
        await no_origin.close()


async def test_logs_have_ids_and_no_secrets(
    make_client, sms: RecordingSms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gql = GraphQLClient(await make_client(app_env=AppEnv.TEST))
    user = await login(gql, sms, password="a-secret-password")
    await gql(
        'mutation($p: String!) { loginWithPassword(input: {mobileNumber: "%s", password: $p}) { accessToken } }'
        % user.number,
        {"p": "a-secret-password"},
    )
    response = await gql.http.post(
        "/graphql", json={"query": ME}, headers={"Authorization": f"Bearer {user.token}"}
    )
    request_id = response.headers["x-request-id"]
    access = [r for r in caplog.records if r.name == "gemini_graphql.access"]
    me_line = next(r for r in access if getattr(r, "request_id", None) == request_id)
    assert me_line.user_id == user.user_id and me_line.status == 200 and me_line.duration_ms >= 0
    formatted = JsonFormatter().format(me_line)
    assert json.loads(formatted)["request_id"] == request_id
    everything = "\n".join(
        JsonFormatter().format(r) for r in caplog.records if r.name != "gemini_graphql.auth.sms"
    )
    code = sms.last_code(user.number)
    for secret in (user.token, "a-secret-password", code):
        assert secret not in everything


async def test_sigterm_closes_websockets_with_1012(
    chat_settings, make_client, sms: RecordingSms
) -> None:
    api, url = await start_api(chat_settings)
    try:
        local = GraphQLClient(await make_client())
        user, room_id = await user_with_room(local, sms)
        sent = await send(local, user.token, room_id)  # no worker: the reply stays PENDING
        async with WsClient.connect(
            url.replace("http://", "ws://") + "/graphql", user.token
        ) as client:
            await client.start(sent["reply"]["id"])
            await asyncio.sleep(0.3)
            api.popen.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(20):
                    while True:
                        await client.socket.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        async with asyncio.timeout(30):
            while api.popen.poll() is None:
                await asyncio.sleep(0.05)
        assert api.popen.returncode in (0, -signal.SIGTERM)
    finally:
        await api.stop()


async def test_sigterm_to_a_worker_mid_reply_still_completes_once(
    chat_settings, fake_gemini, redis_client, pg, make_client, sms: RecordingSms
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=[f"p{i} " for i in range(20)], delay=0.05))
    worker = await start_worker(chat_settings, redis_client)
    try:
        local = GraphQLClient(await make_client())
        user, room_id = await user_with_room(local, sms)
        sent = await send(local, user.token, room_id)
        reply_id = uuid.UUID(sent["reply"]["id"])
        async with asyncio.timeout(10):  # the reply is under way
            while (
                await pg.fetchval("SELECT status FROM messages WHERE id = $1", reply_id)
                != "streaming"
            ):
                await asyncio.sleep(0.02)
        worker.popen.send_signal(signal.SIGTERM)
        async with asyncio.timeout(
            30
        ):  # wait without blocking the loop: the fake Gemini lives here
            while worker.popen.poll() is None:
                await asyncio.sleep(0.05)
        row = await pg.fetchrow("SELECT status, content FROM messages WHERE id = $1", reply_id)
        assert (row["status"], row["content"]) == ("complete", "".join(f"p{i} " for i in range(20)))
        assert len(fake.requests) == 1
    finally:
        await worker.stop()
