"""At most N live leases per key across every process: e.g. open websockets per user.

Each key is a Redis sorted set of lease ids scored by when they expire. Taking a lease
drops the expired ones and adds the new one only while fewer than the limit remain, in one
Lua script (atomic across processes). A process renews all its live leases in one pipeline
every RENEW_SECONDS, so a lease of a process that died without letting go lapses by itself
within LEASE_SECONDS instead of holding its slot forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
RENEW_SECONDS = 20.0

# KEYS[1] the set; ARGV: now, expires_at, lease id, limit, ttl in ms.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    id: str


class Leases:
    """One kind of lease, with `limit` per key, as one process holds them.

    `prefix` starts every key of this kind: a RedisNames.key, so that each deployment counts
    its own."""

    def __init__(self, redis: Redis, prefix: str, *, limit: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limit = limit
        self._take = redis.register_script(_TAKE)
        self._held: set[Lease] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def take(self, key: str) -> Lease | None:
        """A lease on `key`, or None when `limit` are held already (by any process).
        Raises RedisError when Redis cannot be reached."""
        lease = Lease(f"{self._prefix}:{key}", uuid.uuid4().hex)
        now = time.time()
        taken = await self._take(
            keys=[lease.key],
            args=[now, now + LEASE_SECONDS, lease.id, self._limit, int(LEASE_SECONDS * 1000)],
        )
        if not taken:
            return None
        self._held.add(lease)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name=f"renew {self._prefix}")
        return lease

    async def release(self, lease: Lease) -> None:
        """Best effort: a lease that cannot be given back lapses within LEASE_SECONDS."""
        self._held.discard(lease)
        try:
            await self._redis.zrem(lease.key, lease.id)
        except (RedisError, OSError):
            log.warning("could not release a lease on %s; it lapses by itself", lease.key)

    async def _renew(self) -> None:
        while self._held:
            await asyncio.sleep(RENEW_SECONDS)
            held = list(self._held)
            expires_at = time.time() + LEASE_SECONDS
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for lease in held:
                        pipe.zadd(lease.key, {lease.id: expires_at})  # again, if Redis lost it
                        pipe.pexpire(lease.key, int(LEASE_SECONDS * 1000))
                    await pipe.execute()
            except (RedisError, OSError) as exc:  # the next round tries again
                log.warning("could not renew %d leases: %s", len(held), type(exc).__name__)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
