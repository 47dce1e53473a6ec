"""`gemini-graphql dev` with nothing but Python: embedded SQLite, embedded Redis, offline model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from arq.connections import log_redis_info
from redis.asyncio import Redis

from gemini_graphql.app.embedded_redis import EmbeddedRedis
from gemini_graphql.testing.processes import free_port
from tests.auth_flows import ME, SEND_OTP, SIGNUP, VERIFY_OTP
from tests.chat_harness import CREATE_ROOM, ROOM_MESSAGES, SEND, WsClient
from tests.conftest import GraphQLClient


@asynccontextmanager
async def dev_server(directory: Path) -> AsyncIterator[tuple[GraphQLClient, str]]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "GEMINI_API_KEY", "APP_ENV")
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gemini_graphql", "dev", "--port", str(port)],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async with asyncio.timeout(60):
                while True:
                    assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            yield GraphQLClient(http), url.replace("http://", "ws://") + "/graphql"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises SIGTERM
        assert "GraphiQL at" in output and "Quick start" in output


async def test_the_embedded_redis_answers_what_arq_asks_at_start() -> None:
    """INFO is added to fakeredis through its private API (see embedded_redis): a fakeredis
    release that moves it fails here first, with a message saying what to do."""
    embedded = EmbeddedRedis().start()
    try:
        redis = Redis.from_url(embedded.url)
        lines: list[str] = []
        await log_redis_info(redis, lines.append)
        await redis.aclose()
    finally:
        embedded.stop()
    assert lines == ["redis_version=8.0.0 mem_usage=? clients_connected=? db_keys=0"]


async def test_the_whole_journey_and_a_restart(tmp_path: Path) -> None:
    number = "+14155550123"
    async with dev_server(tmp_path) as (gql, ws_url):
        assert (await gql.http.get("/health")).json()["checks"] == {"sqlite": "ok", "redis": "ok"}
        assert (await gql(SIGNUP, {"input": {"mobileNumber": number}}))["data"]["signup"][
            "errors"
        ] == []
        code = (await gql(SEND_OTP, {"input": {"mobileNumber": number}}))["data"]["sendOtp"][
            "devCode"
        ]
        assert code and len(code) == 6
        login = (await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": code}}))["data"][
            "verifyOtp"
        ]
        token = login["accessToken"]
        room = (await gql(CREATE_ROOM, {"input": {"title": "Dev"}}, token=token))["data"][
            "createChatroom"
        ]
        room_id = room["chatroom"]["id"]
        sent = (
            await gql(
                SEND, {"input": {"chatroomId": room_id, "content": "Hello offline"}}, token=token
            )
        )["data"]["sendMessage"]
        assert sent["errors"] == []
        async with WsClient.connect(ws_url, token) as client:
            result = await client.collect(await client.start(sent["reply"]["id"]), timeout=30)
        assert result.completed and len(result.events) > 3  # streamed in several pieces
        assert "offline model" in result.text and "Hello offline" in result.text
        assert result.events[-1]["message"]["content"] == result.text
        before = await gql(ROOM_MESSAGES, {"id": room_id}, token=token)

    async with dev_server(tmp_path) as (gql, ws_url):  # the data survives a restart
        assert (await gql(ME, token=token))["data"]["me"]["mobileNumber"] == number
        assert await gql(ROOM_MESSAGES, {"id": room_id}, token=token) == before


async def test_daily_limit_holds_under_concurrency_on_the_embedded_store(tmp_path: Path) -> None:
    number = "+14155550199"
    async with dev_server(tmp_path) as (gql, _):
        await gql(SIGNUP, {"input": {"mobileNumber": number}})
        code = (await gql(SEND_OTP, {"input": {"mobileNumber": number}}))["data"]["sendOtp"][
            "devCode"
        ]
        token = (await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": code}}))["data"][
            "verifyOtp"
        ]["accessToken"]
        room_id = (await gql(CREATE_ROOM, {"input": {"title": "Limits"}}, token=token))["data"][
            "createChatroom"
        ]["chatroom"]["id"]
        results = await asyncio.gather(
            *(
                gql(SEND, {"input": {"chatroomId": room_id, "content": f"m{i}"}}, token=token)
                for i in range(20)
            )
        )
        payloads = [body["data"]["sendMessage"] for body in results]
        assert sum(1 for p in payloads if not p["errors"]) == 5
        assert (
            sum(
                1
                for p in payloads
                if p["errors"] and p["errors"][0]["code"] == "DAILY_LIMIT_REACHED"
            )
            == 15
        )
        assert (await gql(ME, token=token))["data"]["me"]["usage"]["used"] == 5
