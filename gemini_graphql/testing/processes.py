"""Real `gemini-graphql serve` and `worker` processes, for scale-out and crash tests and the
benchmarks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis

from gemini_graphql.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process use `settings`."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "APP_ENV": settings.app_env.value,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
        "SECRET_KEY": settings.secret_key,
        "GEMINI_API_KEY": settings.gemini_api_key or "",
        "GEMINI_BASE_URL": settings.gemini_base_url or "",
        "GEMINI_TIMEOUT_SECONDS": str(settings.gemini_timeout_seconds),
        "GEMINI_RETRY_BASE_SECONDS": str(settings.gemini_retry_base_seconds),
        "WORKER_JOB_TIMEOUT_SECONDS": str(settings.worker_job_timeout_seconds),
        "AUTH_RATE_PER_IP": str(settings.auth_rate_per_ip),
        "AUTH_RATE_PER_NUMBER": str(settings.auth_rate_per_number),
        "MAX_WEBSOCKETS_PER_USER": str(settings.max_websockets_per_user),
        "DRAIN_GRACE_SECONDS": str(settings.drain_grace_seconds),
        "ACCESS_LOG": settings.access_log.value,
        "METRICS_PORT": str(settings.metrics_port),
    }
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)  # immediate: SIGKILL cannot be caught

    async def stop(self) -> None:
        """SIGTERM, and wait without blocking the loop (the fakes the process uses live there)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    while self.popen.poll() is None:
                        await asyncio.sleep(0.05)
            except TimeoutError:
                self.kill()


def _spawn(
    args: list[str],
    settings: Settings,
    log_path: str | None = None,
    *,
    module: str = "gemini_graphql",
    env: dict[str, str] | None = None,
) -> Process:
    log = open(log_path or os.environ.get("TEST_PROCESS_LOG", os.devnull), "ab")  # noqa: SIM115
    return Process(
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**settings_env(settings), **(env or {})},
            stdout=log,
            stderr=log,
        )
    )


async def start_api(
    settings: Settings,
    *,
    module: str = "gemini_graphql",
    args: tuple[str, ...] = ("serve", "--port"),
    env: dict[str, str] | None = None,
) -> tuple[Process, str]:
    """`python -m <module> <args> <port>`, once its /health answers 200; `env`: variables
    beyond the settings'."""
    port = free_port()
    process = _spawn([*args, str(port)], settings, module=module, env=env)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client, asyncio.timeout(30):
        while True:
            assert process.popen.poll() is None, "the api process exited"
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


def spawn_worker(settings: Settings, log_path: str) -> Process:
    """A worker process, not waited for (its Redis may be down); its output to `log_path`."""
    return _spawn(["worker"], settings, log_path)


async def start_worker(
    settings: Settings, redis: aioredis.Redis, *, env: dict[str, str] | None = None
) -> Process:
    """A worker process, once it is connected to Redis; `env`: variables beyond the settings'."""
    process = _spawn(["worker"], settings, env=env)
    name = f"gemini-graphql:worker:{process.pid}"
    async with asyncio.timeout(30):
        while not any(client.get("name") == name for client in await redis.client_list()):
            assert process.popen.poll() is None, "the worker process exited"
            await asyncio.sleep(0.1)
    return process
