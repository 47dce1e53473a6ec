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
from dataclasses import replace
from pathlib import Path

import uvicorn

from gemini_graphql.app.embedded_redis import EmbeddedRedis
from gemini_graphql.app.http_app import create_app
from gemini_graphql.app.worker import build_worker
from gemini_graphql.config import AppEnv, ConfigError, Settings
from gemini_graphql.infra.migrate import migrate
from gemini_graphql.web.server import uvicorn_options

log = logging.getLogger(__name__)
DATA_DIR = Path(".gemini-graphql")


def run_dev(settings: Settings, host: str | None, port: int | None) -> int:
    if settings.is_production:
        raise ConfigError(["APP_ENV: `dev` runs in dev mode; use `serve` for production"])
    settings = replace(settings, app_env=AppEnv.DEV)
    notes = []
    if not os.environ.get("DATABASE_URL"):
        DATA_DIR.mkdir(exist_ok=True)
        database = (DATA_DIR / "dev.sqlite3").resolve()
        settings = replace(settings, database_url=f"sqlite+aiosqlite:///{database}")
        notes.append(f"database: embedded SQLite at {database} (set DATABASE_URL for PostgreSQL)")
    else:
        notes.append("database: PostgreSQL from DATABASE_URL")
    embedded = None
    if not os.environ.get("REDIS_URL"):
        embedded = EmbeddedRedis().start()
        settings = replace(settings, redis_url=embedded.url)
        notes.append("redis: embedded, in this process (set REDIS_URL for a Redis server)")
    else:
        notes.append("redis: REDIS_URL")
    notes.append(
        "gemini: GEMINI_API_KEY"
        if settings.gemini_api_key
        else "gemini: offline model (set GEMINI_API_KEY for real answers)"
    )
    notes.append(
        "payments: Stripe"
        if settings.payments_enabled
        else "payments: off (subscribePro answers PAYMENTS_UNAVAILABLE without Stripe keys)"
    )
    migrate(settings.database_url)
    host, port = host or settings.host, port or settings.port
    print(_banner(host, port, notes), flush=True)
    try:
        asyncio.run(_serve_with_worker(settings, host, port))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


async def _serve_with_worker(settings: Settings, host: str, port: int) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            timeout_graceful_shutdown=10,
            **uvicorn_options(settings),
        )
    )
    worker = build_worker(settings, handle_signals=False)
    worker_task = asyncio.create_task(worker.async_run(), name="arq-worker")
    try:
        await server.serve()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task


def _banner(host: str, port: int, notes: list[str]) -> str:
    url = f"http://{host}:{port}"
    lines = [
        "",
        f"gemini-graphql dev is running: GraphiQL at {url}/graphql",
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
