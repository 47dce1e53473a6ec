"""Connections and clients one process (api or worker) shares across requests and jobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from gemini_graphql.auth.sms import SmsSender, build_sms_sender
from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import Settings
from gemini_graphql.db import SessionFactory, create_engine, create_session_factory


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    redis: aioredis.Redis
    sms: SmsSender
    clock: Clock = field(default=utc_now)

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock = utc_now, sms: SmsSender | None = None
    ) -> Resources:
        engine = create_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=create_session_factory(engine),
            redis=aioredis.Redis.from_url(settings.redis_url, decode_responses=False),
            sms=sms or build_sms_sender(settings),
            clock=clock,
        )

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()
