"""The plain routes: what this service is, and whether it is healthy.

/health: the database and Redis answer and the schema is at head. /health/ready: the same,
and the process is not draining (told to stop; see web/drain.py), i.e. ready for traffic.
/health/live: the process answers at all (restart it if not); it checks nothing else, so an
outage of a store takes pods out of rotation without restarting them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse

from gemini_graphql import __version__
from gemini_graphql.infra.migrate import SchemaWatch
from gemini_graphql.infra.resources import Resources
from gemini_graphql.web.drain import is_draining

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


async def live(request: Request) -> JSONResponse:
    """200 whenever the event loop answers: no store is asked."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """What /health says, except 503 "draining" once the process was told to stop (it goes on
    serving for DRAIN_GRACE_SECONDS): a 503 takes it out of a load balancer's rotation."""
    checks = await _store_checks(request)
    if is_draining(request.scope.get("state", {})):
        return JSONResponse(
            {"status": "draining", "checks": {**checks, "process": "draining"}}, status_code=503
        )
    return _answer(checks)


async def health(request: Request) -> JSONResponse:
    """200 when the database and Redis answer within a couple of seconds and the database is at
    the code's migration head; 503 naming what failed ("migrations pending": the schema is
    behind, read again every few seconds). Draining or not: it speaks of the stores."""
    return _answer(await _store_checks(request))


def _answer(checks: dict[str, str]) -> JSONResponse:
    healthy = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )


async def _store_checks(request: Request) -> dict[str, str]:
    resources: Resources = request.app.state.resources
    schema: SchemaWatch | None = getattr(request.app.state, "schema", None)
    database, redis = await asyncio.gather(
        _check_database(resources, schema), _check_redis(resources)
    )
    database_name = "sqlite" if resources.database.engine.dialect.name == "sqlite" else "postgres"
    return {database_name: database, "redis": redis}


async def _check_database(resources: Resources, schema: SchemaWatch | None) -> str:
    async def ping() -> None:
        async with resources.database.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))
            if schema is not None:
                await schema.refresh(connection)

    state = await _probe(ping())
    if state == "ok" and schema is not None and schema.pending:
        return "migrations pending"
    return state


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
