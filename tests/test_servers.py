"""The private servers of tests/servers.py do what fault tests rely on: a restart comes back
on the same port with or without the data, breaks the connections from before, and nothing
is left behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.servers import (
    PostgresCluster,
    RedisServer,
    ServerUnavailable,
    pid_gone,
    postgres_bindir,
    redis_binary,
)

pytest_plugins = ["tests.servers"]

try:
    redis_binary(), postgres_bindir()
except ServerUnavailable as missing:
    pytest.skip(str(missing), allow_module_level=True)

# What asyncpg raises on a connection whose server went away.
BROKEN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@pytest.fixture
def clean_state() -> None:
    """Overrides conftest's: this module uses neither the shared database nor the shared Redis."""


def single(url: str) -> aioredis.Redis:
    """A client on one connection that is never silently replaced (a pooled client would
    reconnect an idle connection and hide the break)."""
    return aioredis.Redis.from_url(url, single_connection_client=True)


async def test_a_redis_restart_keeping_data(redis_server: RedisServer) -> None:
    before = single(redis_server.url)
    port = redis_server.port
    try:
        await before.set("kept", "yes")
        await redis_server.restart(down_for=0.2, keep_data=True)
        assert redis_server.port == port and redis_server.url.endswith(f":{port}/0")
        with pytest.raises(RedisConnectionError):
            await before.get("kept")
    finally:
        await before.aclose()
    after = single(redis_server.url)
    try:
        assert await after.get("kept") == b"yes"
    finally:
        await after.aclose()


@pytest.mark.parametrize("keep_data", [True, False], ids=["keeping", "losing"])
@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "memory"])
async def test_a_graceful_redis_restart_keeps_data_as_asked(
    persistent: bool, keep_data: bool
) -> None:
    async with RedisServer(persistent=persistent) as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            await client.set("key", "yes")
            await server.restart(keep_data=keep_data)
            assert await client.get("key") == (b"yes" if keep_data else None)
        finally:
            await client.aclose()


@pytest.mark.parametrize("persistent", [True, False])
async def test_a_killed_redis_keeps_what_persistence_kept(persistent: bool) -> None:
    async with RedisServer(persistent=persistent) as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            await client.set("written", "yes")
            pid = server.pid
            assert pid is not None
            await server.kill()
            assert pid_gone(pid) and not server.running
            await server.start()
            assert await client.get("written") == (b"yes" if persistent else None)
        finally:
            await client.aclose()


async def test_a_redis_server_is_removed_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with RedisServer() as server:
            pid, directory = server.pid, server.directory
            raise RuntimeError("the test failed")
    assert pid is not None and pid_gone(pid)
    assert not directory.exists()


async def test_a_postgresql_restart_keeps_data_and_breaks_connections(
    postgres_cluster: PostgresCluster,
) -> None:
    url = await postgres_cluster.create_database()
    assert url.startswith(f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_cluster.port}/test_")
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    before = await asyncpg.connect(dsn)
    try:
        await before.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)")
        port, pid = postgres_cluster.port, postgres_cluster.pid
        await postgres_cluster.restart(down_for=1)
        assert postgres_cluster.port == port and postgres_cluster.pid != pid
        with pytest.raises(BROKEN):
            await before.fetchval("SELECT 1")
    finally:
        await before.close()
    # The URL is SQLAlchemy's, as the app takes it.
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT sum(n) FROM kept"))).scalar() == 3
    finally:
        await engine.dispose()


async def test_a_killed_postgresql_keeps_committed_data(postgres_cluster: PostgresCluster) -> None:
    name = "killed"
    await postgres_cluster.create_database(name)
    connection = await asyncpg.connect(postgres_cluster.dsn_for(name))
    try:
        await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        pids = postgres_cluster.pids()
        assert len(pids) > 1  # the postmaster, its helpers and our backend
        await postgres_cluster.kill()
        assert all(pid_gone(pid) for pid in pids)
    finally:
        await connection.close()
    await postgres_cluster.start()  # crash recovery
    connection = await asyncpg.connect(postgres_cluster.dsn_for(name))
    try:
        assert await connection.fetchval("SELECT n FROM kept") == 7
    finally:
        await connection.close()
    await postgres_cluster.drop_database(name)


async def test_the_shared_cluster_is_back_for_the_next_test(
    postgres_cluster: PostgresCluster,
) -> None:
    """A test may leave the cluster down; the fixture starts it again. This one leaves it down."""
    await postgres_cluster.stop()
    assert not postgres_cluster.running


async def test_the_cluster_is_running_again(postgres_cluster: PostgresCluster) -> None:
    assert postgres_cluster.running
    connection = await asyncpg.connect(postgres_cluster.dsn)
    await connection.close()


async def test_a_cluster_is_removed_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with PostgresCluster() as cluster:
            pids, directory = cluster.pids(), cluster.directory
            raise RuntimeError("the test failed")
    assert pids and all(pid_gone(pid) for pid in pids)
    assert not Path(directory).exists()
    with pytest.raises(OSError):  # nothing listens on its port any more
        await asyncio.open_connection("127.0.0.1", cluster.port)
