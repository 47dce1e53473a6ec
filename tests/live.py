"""A real uvicorn server on a free port, for tests that need real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp

from gemini_graphql.config import Settings
from gemini_graphql.web.server import uvicorn_options


@asynccontextmanager
async def serve(app: ASGIApp, settings: Settings | None = None) -> AsyncIterator[str]:
    """Run `app` under uvicorn on 127.0.0.1, with the options production uses (from
    `settings`, default the defaults), and yield its base URL (http://host:port)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
        **uvicorn_options(settings or Settings()),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
