"""The probes an orchestrator runs: /health/live, /health/ready and `worker --check`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace

import httpx
import redis.asyncio as aioredis

from gemini_graphql.config import Settings
from gemini_graphql.testing.processes import settings_env, start_worker
from tests.servers import RedisServer


async def test_live_and_ready_when_everything_answers(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_ready_is_503_while_redis_is_down_and_live_stays_200(make_client) -> None:
    async with RedisServer() as redis_server:
        client = await make_client(redis_url=redis_server.url)
        assert (await client.get("/health/ready")).status_code == 200
        await redis_server.stop()
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "unavailable"}
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health")).status_code == 503  # /health means the same


async def test_ready_is_503_when_postgres_is_unreachable(make_client) -> None:
    client = await make_client(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    assert (await client.get("/health/ready")).status_code == 503
    assert (await client.get("/health/live")).status_code == 200


async def worker_check(settings: Settings) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gemini_graphql", "worker", "--check"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_worker_check_before_while_and_after_a_worker_runs(
    base_settings: Settings, redis_client: aioredis.Redis
) -> None:
    before = await worker_check(base_settings)
    assert before.returncode == 1, before
    assert "no worker on this host" in before.stdout
    worker = await start_worker(base_settings, redis_client)
    try:
        async with asyncio.timeout(20):  # the first poll writes the key
            while (during := await worker_check(base_settings)).returncode != 0:
                await asyncio.sleep(0.2)
        assert "alive" in during.stdout
    finally:
        await worker.stop()
    after = await worker_check(base_settings)  # arq deletes its key when it stops
    assert after.returncode == 1, after


async def test_worker_check_is_1_when_redis_is_unreachable(base_settings: Settings) -> None:
    result = await worker_check(replace(base_settings, redis_url="redis://127.0.0.1:1/0"))
    assert result.returncode == 1
    assert "Redis unavailable" in result.stdout
