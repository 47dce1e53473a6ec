"""Connections and clients one process (api or worker) shares across requests and jobs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool

from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import Settings
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.user_cache import CHANNEL as USERS_CHANGED
from gemini_graphql.infra.user_cache import UserCache


@dataclass(slots=True)
class Resources:
    settings: Settings
    database: Database
    # One bounded pool per process: the connection count never grows with the load.
    # ArqRedis is a redis.asyncio.Redis that can also enqueue jobs.
    redis: ArqRedis
    # Users' rows and room lists; every writer of either announces its change here.
    users: UserCache
    clock: Clock = field(default=utc_now)

    @classmethod
    def open(cls, settings: Settings, *, role: str = "api", clock: Clock = utc_now) -> Resources:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=10,
            client_name=f"gemini-graphql:{role}:{os.getpid()}",
        )
        names = settings.redis_names
        # Jobs go to this deployment's queue, whoever enqueues them (the worker's cron too).
        redis = ArqRedis(pool, default_queue_name=names.arq_queue)
        return cls(
            settings=settings,
            database=Database.open(settings.database_url),
            redis=redis,
            users=UserCache(
                redis,
                ttl_seconds=settings.user_cache_seconds,
                channel=names.channel(USERS_CHANGED),
            ),
            clock=clock,
        )

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        await self.database.close()
