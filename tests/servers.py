"""Private redis-server and PostgreSQL servers that fault tests stop, kill and restart.

The shared services of the machine are never touched: each server here listens on its own
free loopback port with its own directory, and is always stopped and removed afterwards.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import asyncpg
import redis.asyncio as aioredis

from tests.processes import free_port

START_TIMEOUT_SECONDS = 30.0


class RedisServer:
    """redis-server on a free port. `persistent`: an append-only file written at every
    command, so a restart (even after SIGKILL) finds the data again; otherwise a restart
    starts empty."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.persistent = persistent
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="gemini-redis-")
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, *, keep_data: bool = True) -> None:
        if not keep_data:
            for name in os.listdir(self._dir):
                path = os.path.join(self._dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self._process = await asyncio.create_subprocess_exec(
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self._dir,
            "--save", "", *persistence, "--logfile", os.path.join(self._dir, "redis.log"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                while True:
                    try:
                        if await client.ping():
                            return
                    except (OSError, aioredis.RedisError):
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file (when it has one) and exits."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        await self._end(signal.SIGKILL)

    async def restart(self, *, down_for: float, keep_data: bool) -> None:
        """Gone for `down_for` seconds, then back on the same port, with or without its data."""
        await self.stop()
        await asyncio.sleep(down_for)
        await self.start(keep_data=keep_data and self.persistent)

    async def _end(self, signum: int) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signum)
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    return Path(initdb).parent


class PostgresCluster:
    """A PostgreSQL cluster of its own (initdb, trust auth, loopback, no fsync), run as the
    `postgres` user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._bin = _postgres_bin()
        self._dir = Path(tempfile.mkdtemp(prefix="gemini-pg-"))
        self._data = self._dir / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *args: str) -> list[str]:
        command = [str(self._bin / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    async def _run(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._as_owner(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {output.decode(errors='replace')[-2000:]}")

    async def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        await self._run("initdb", "-D", str(self._data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port), "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "32MB",
            "max_connections": "100", "unix_socket_directories": f"'{self._dir}'",
        }
        with open(self._data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in options.items())

    async def start(self) -> None:
        await self._run("pg_ctl", "-D", str(self._data), "-l", str(self._dir / "log"), "-w", "start")
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            while True:
                try:
                    connection = await asyncpg.connect(self.dsn, timeout=2)
                except (OSError, asyncpg.PostgresError):
                    await asyncio.sleep(0.1)
                else:
                    await connection.close()
                    return

    async def stop(self, mode: str = "fast") -> None:
        await self._run("pg_ctl", "-D", str(self._data), "-m", mode, "-w", "stop")

    async def restart(self, *, down_for: float) -> None:
        """A fast shutdown (connections are terminated), down for `down_for`, back on the same port."""
        await self.stop()
        await asyncio.sleep(down_for)
        await self.start()

    async def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy (asyncpg) URL."""
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    async def __aenter__(self) -> PostgresCluster:
        await self.init()
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)
