"""`gemini-graphql dev`: the whole service in one process, with nothing but Python installed.

PostgreSQL when DATABASE_URL is set, else an embedded SQLite file; Redis when
REDIS_URL is set, else an embedded Redis-compatible server; the arq worker in
the same process; Gemini with GEMINI_API_KEY, else the offline model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from gemini_graphql.app.embedded_redis import EmbeddedRedis
from gemini_graphql.config import AppEnv, ConfigError, Settings
from gemini_graphql.infra.migrate import NotReady, migrate, redacted_url
from gemini_graphql.web.server import uvicorn_options

log = logging.getLogger(__name__)
DATA_DIR = Path(".gemini-graphql")
REDIS_TIMEOUT_SECONDS = 5.0


def run_dev(settings: Settings, host: str | None, port: int | None) -> int:
    """Everything checked before anything runs: the port, Redis, the database (migrated here).
    What cannot be used stops the command with NotReady (one line, naming it); the banner is
    printed once the server listens."""
    if settings.is_production:
        raise ConfigError(["APP_ENV: `dev` runs in dev mode; use `serve` for production"])
    settings = replace(settings, app_env=AppEnv.DEV)
    listener = _listen(host or settings.host, settings.port if port is None else port)
    embedded = None
    try:
        notes = []
        if not os.environ.get("DATABASE_URL"):
            database = (DATA_DIR / "dev.sqlite3").resolve()
            try:
                DATA_DIR.mkdir(exist_ok=True)
            except OSError as exc:
                raise NotReady(
                    f"cannot create {database.parent} for the embedded SQLite database: "
                    f"{(exc.strerror or str(exc)).lower()}. Run it from a writable directory, "
                    "or set DATABASE_URL."
                ) from exc
            settings = replace(settings, database_url=f"sqlite+aiosqlite:///{database}")
            notes.append(
                f"database: embedded SQLite at {database} (set DATABASE_URL for PostgreSQL)"
            )
        else:
            notes.append(f"database: {redacted_url(settings.database_url)}")
        if not os.environ.get("REDIS_URL"):
            embedded = EmbeddedRedis().start()
            settings = replace(settings, redis_url=embedded.url)
            notes.append(
                f"redis: {embedded.url}, embedded in this process "
                "(set REDIS_URL for a Redis server)"
            )
        else:
            asyncio.run(_check_redis(settings.redis_url))
            notes.append(f"redis: {redacted_url(settings.redis_url)}")
        notes.append(
            f"gemini: {settings.gemini_model} through the Gemini API"
            if settings.gemini_api_key
            else "gemini: offline model (set GEMINI_API_KEY for real answers)"
        )
        notes.append(
            "payments: Stripe"
            if settings.payments_enabled
            else "payments: off (subscribePro answers PAYMENTS_UNAVAILABLE without Stripe keys)"
        )
        migrate(settings.database_url)
        asyncio.run(_serve_with_worker(settings, listener, notes))
    finally:
        listener.close()
        if embedded is not None:
            embedded.stop()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (so a port in use is told in one line, before anything
    starts); uvicorn listens on it once the app has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise NotReady(
            f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}. "
            "Stop what uses it, or pass --port (or set PORT)."
        ) from exc
    return listener


async def _check_redis(url: str) -> None:
    """REDIS_URL answers a PING, or NotReady naming it."""
    client = Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
    except (redis_errors.RedisError, OSError) as exc:
        raise NotReady(_why_redis_unusable(exc, url)) from exc
    finally:
        await client.aclose()


def _why_redis_unusable(exc: BaseException, url: str) -> str:
    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    # The first sentence of what the server or the OS said (redis-py puts "Error N connecting
    # to host:port." before the OS's reason).
    said = re.sub(r"^Error -?\d+ connecting to \S+?\. ", "", str(exc).strip())
    reason = said.split(". ")[0].rstrip(".")
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return (
            f"Redis at {where} refused the credentials: {reason}. Check the user and password "
            "in REDIS_URL."
        )
    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        reason = f"no answer within {REDIS_TIMEOUT_SECONDS:g} s"
    elif "refused" in reason.lower() or "Connect call failed" in str(exc):
        reason = "connection refused"
    elif isinstance(exc, redis_errors.ResponseError):
        return f"Redis at {where} refused {redacted_url(url)}: {reason}. Check REDIS_URL."
    reason = reason[:1].lower() + reason[1:] if reason else type(exc).__name__
    return f"cannot reach Redis at {where}: {reason}. Is it running? Check REDIS_URL."


class _DevServer(uvicorn.Server):
    """uvicorn's server, printing the banner once it listens (the URLs in it answer)."""

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            print(self.banner, flush=True)


async def _serve_with_worker(settings: Settings, listener: socket.socket, notes: list[str]) -> None:
    # Imported here, once the checks passed: the app and the worker take a couple of seconds
    # to import, which a dev mode that cannot start should not spend before saying so.
    from gemini_graphql.app.http_app import create_app
    from gemini_graphql.app.worker import build_worker

    host, port = listener.getsockname()[:2]
    server = _DevServer(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            timeout_graceful_shutdown=10,
            **uvicorn_options(settings),
        ),
        _banner(host, port, notes),
    )
    worker = build_worker(settings, handle_signals=False)
    worker_task = asyncio.create_task(worker.async_run(), name="arq-worker")

    def worker_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the worker stopped: the dev server stops too")
            server.should_exit = True

    worker_task.add_done_callback(worker_ended)
    try:
        await server.serve(sockets=[listener])
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task


def _banner(host: str, port: int, notes: list[str]) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
        host, f"[{host}]" if ":" in host else host
    )
    url = f"http://{shown}:{port}"
    lines = [
        "",
        f"gemini-graphql dev is running: GraphiQL at {url}/graphql",
        f"  websocket: ws://{shown}:{port}/graphql (graphql-transport-ws)",
        *(f"  {note}" for note in notes),
        "",
        "Quick start (in GraphiQL, or with curl against the same URL):",
        '  1. mutation { signup(input: {mobileNumber: "+14155550123"}) { user { id } errors { message } } }',
        '     mutation { sendOtp(input: {mobileNumber: "+14155550123"}) { devCode } }',
        '  2. mutation { verifyOtp(input: {mobileNumber: "+14155550123", code: "<devCode>"}) { accessToken } }',
        '     then add the header  {"Authorization": "Bearer <accessToken>"}',
        '  3. mutation { createChatroom(input: {title: "Hello"}) { chatroom { id } } }',
        '     mutation { sendMessage(input: {chatroomId: "<id>", content: "Hi!"}) { reply { id } } }',
        '     subscription { messageStream(messageId: "<reply id>") { delta status } }',
        "",
    ]
    return "\n".join(lines)
