"""Connections and clients one process (api or worker) shares across requests and jobs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine

from gemini_graphql.auth.sms import SmsSender, build_sms_sender
from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import Settings
from gemini_graphql.db import (
    SessionFactory,
    autocommit_engine,
    create_engine,
    create_read_session_factory,
    create_session_factory,
)
from gemini_graphql.user_cache import UserCache


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    autocommit: AsyncEngine  # for single statements: no BEGIN/COMMIT round trips
    sessions: SessionFactory
    reads: SessionFactory  # autocommit sessions for one-statement reads
    # One bounded pool per process: the connection count never grows with the load.
    # ArqRedis is a redis.asyncio.Redis that can also enqueue jobs.
    redis: ArqRedis
    sms: SmsSender
    # Users' rows and room lists; every writer of either announces its change here.
    users: UserCache
    clock: Clock = field(default=utc_now)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        role: str = "api",
        clock: Clock = utc_now,
        sms: SmsSender | None = None,
    ) -> Resources:
        engine = create_engine(settings.database_url)
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=10,
            client_name=f"gemini-graphql:{role}:{os.getpid()}",
        )
        redis = ArqRedis(pool)
        return cls(
            settings=settings,
            engine=engine,
            autocommit=autocommit_engine(engine),
            sessions=create_session_factory(engine),
            reads=create_read_session_factory(engine),
            redis=redis,
            sms=sms or build_sms_sender(settings),
            users=UserCache(redis, ttl_seconds=settings.user_cache_seconds),
            clock=clock,
        )

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()
