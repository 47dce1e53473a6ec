"""What every benchmark runs against: real `serve` and `worker` processes on a scratch
PostgreSQL database and Redis database, with the fake Gemini answering at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import asyncpg
import httpx
import redis.asyncio as aioredis

from gemini_graphql.config import AccessLog, AppEnv, Settings
from gemini_graphql.infra.migrate import migrate
from gemini_graphql.testing.fakes.gemini import API_KEY
from gemini_graphql.testing.processes import Process, free_port, start_api, start_worker
from tests.servers import RedisServer

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Unset: each stack gets a private redis-server (another run's FLUSHDB cannot reach it).
REDIS_URL = os.environ.get("BENCH_REDIS_URL")
# One database per bench process: two runs at once on one machine must not drop each other's.
DB_NAME = f"gemini_bench_{os.getpid()}"
NUMBER = "+14155550109"


@dataclass
class Stack:
    url: str
    ws_url: str
    api: Process
    token: str
    user_id: str
    room_id: str
    settings: Settings
    gemini_url: str
    redis: aioredis.Redis
    dsn: str
    worker_pid: int | None = None  # the stack's worker process, when it has one

    async def gql(self, http: httpx.AsyncClient, query: str, variables: dict | None = None) -> dict:
        response = await http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return response.json()["data"]


async def fresh_database() -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    url = (
        ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        + "/"
        + DB_NAME
    )
    await asyncio.to_thread(migrate, url)
    return url


@asynccontextmanager
async def running_stack(
    *, worker: bool = True, redis_url: str | None = REDIS_URL
) -> AsyncIterator[Stack]:
    """`redis_url`: None starts a private redis-server for the stack (stopped after)."""
    if redis_url is None:
        server = RedisServer()
        await server.start()
        try:
            async with running_stack(worker=worker, redis_url=server.url) as stack:
                yield stack
        finally:
            await server.stop(keep_data=False)
        return
    database_url = await fresh_database()
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    async with uvicorn_process("bench.fake_gemini:app", "/") as gemini_url:
        settings = replace(
            Settings(),
            app_env=AppEnv.DEV,
            database_url=database_url,
            redis_url=redis_url,
            gemini_api_key=API_KEY,
            gemini_base_url=gemini_url,
            auth_rate_per_ip=1_000_000,
            auth_rate_per_number=1_000_000,
            pro_daily_limit=1_000_000_000,
            # One user holds every benchmark subscription, each on its own socket.
            max_websockets_per_user=100_000,
            access_log=AccessLog.ERRORS,  # production's default
        )
        # settings_env passes no daily limits: without this a Pro user meets 1000 a day.
        limit = {"PRO_DAILY_LIMIT": str(settings.pro_daily_limit)}
        started = [start_api(settings, env=limit)] + (
            [start_worker(settings, redis, env=limit)] if worker else []
        )
        (api, url), *workers = await asyncio.gather(*started)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                token, user_id = await _log_in(http)
            dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DB_NAME
            conn = await asyncpg.connect(dsn)
            await conn.execute("UPDATE users SET subscription_tier = 'pro'")
            await conn.close()
            stack = Stack(
                url,
                url.replace("http://", "ws://") + "/graphql",
                api,
                token,
                user_id,
                "",
                settings,
                gemini_url,
                redis,
                dsn,
                workers[0].pid if workers else None,
            )
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                room = await stack.gql(
                    http, 'mutation { createChatroom(input: {title: "bench"}) { chatroom { id } } }'
                )
            stack.room_id = room["createChatroom"]["chatroom"]["id"]
            yield stack
        finally:
            for process in [api, *workers]:
                await process.stop()
            await redis.aclose()


async def _log_in(http: httpx.AsyncClient) -> tuple[str, str]:
    async def call(query: str, variables: dict) -> dict:
        return (await http.post("/graphql", json={"query": query, "variables": variables})).json()[
            "data"
        ]

    await call(
        "mutation($n: String!) { signup(input: {mobileNumber: $n}) { errors { code } } }",
        {"n": NUMBER},
    )
    sent = await call(
        "mutation($n: String!) { sendOtp(input: {mobileNumber: $n}) { devCode } }", {"n": NUMBER}
    )
    verified = await call(
        "mutation($n: String!, $c: String!) { verifyOtp(input: {mobileNumber: $n, code: $c}) { accessToken user { id } } }",
        {"n": NUMBER, "c": sent["sendOtp"]["devCode"]},
    )
    return verified["verifyOtp"]["accessToken"], verified["verifyOtp"]["user"]["id"]


@asynccontextmanager
async def uvicorn_process(
    app: str, probe: str, env: dict[str, str] | None = None, *, quiet: bool = False
) -> AsyncIterator[str]:
    """`app` under the same uvicorn flags as `serve`, in its own process; yields its URL.
    `quiet`: its output (an app's access log, a line per request) goes nowhere."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--ws-per-message-deflate",
            "false",
        ],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                try:
                    await client.get(url + probe)  # any answer means it listens
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait()


async def drop_database() -> None:
    """This process's database, at the end of a run."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    finally:
        await admin.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
