"""Request throttling with Redis counters (fixed windows), shared by every api process."""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis

from gemini_graphql.errors import RateLimited


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        """`prefix` starts every counter's key: a RedisNames.key, so that each deployment
        counts its own requests."""
        self._redis = redis
        self._prefix = prefix

    async def hit(self, scope: str, key: str, *, limit: int, window: int) -> None:
        """Count one request for `key`; raise RateLimited once more than `limit` fall in a window."""
        now = time.time()
        window_index = int(now // window)
        redis_key = f"{self._prefix}:{scope}:{key}:{window_index}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window + 1)
            count, _ = await pipe.execute()
        if count > limit:
            retry_after = max(1, math.ceil((window_index + 1) * window - now))
            raise RateLimited(retry_after)
