"""The plain routes: what this service is, and whether it is healthy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse

from gemini_graphql import __version__
from gemini_graphql.infra.resources import Resources

HEALTH_TIMEOUT_SECONDS = 2.0


async def root(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "name": "gemini-graphql",
            "version": __version__,
            "links": {
                "graphql": str(request.url_for("graphql")),
                "health": str(request.url_for("health")),
            },
        }
    )


async def health(request: Request) -> JSONResponse:
    """200 when the database and Redis answer within a couple of seconds; 503 naming what failed."""
    resources: Resources = request.app.state.resources
    database, redis = await asyncio.gather(_check_database(resources), _check_redis(resources))
    database_name = "sqlite" if resources.database.engine.dialect.name == "sqlite" else "postgres"
    checks = {database_name: database, "redis": redis}
    healthy = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )


async def _check_database(resources: Resources) -> str:
    async def ping() -> None:
        async with resources.database.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    return await _probe(ping())


async def _check_redis(resources: Resources) -> str:
    async def ping() -> None:
        await resources.redis.ping()

    return await _probe(ping())


async def _probe(check: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await check
    except Exception:  # any failure means unavailable; the reason is not for the public
        return "unavailable"
    return "ok"
