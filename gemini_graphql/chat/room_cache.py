"""The first page of each user's room list, cached in Redis for ten minutes.

Writers bump a per-user version after they commit; readers read the version
first and store what they computed under it. A reader that raced a writer
stores its (stale) page under the old version, where nobody looks any more,
so the cache can never serve an outdated order.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gemini_graphql.models import Chatroom

log = logging.getLogger(__name__)

TTL_SECONDS = 600
VERSION_TTL_SECONDS = 86_400  # far longer than a cached page lives
CACHED_ROWS = 100  # enough for any page size the API allows

# One round trip: the version, and the page stored under it.
_READ = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', KEYS[2] .. version)}
"""


class RoomListCache:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._read = redis.register_script(_READ)

    @staticmethod
    def _keys(user_id: uuid.UUID) -> tuple[str, str]:
        return f"rooms:v:{user_id}", f"rooms:first:{user_id}:"

    async def get(self, user_id: uuid.UUID) -> tuple[str, list[Chatroom] | None]:
        """The current version, and the cached first rows (None on a miss)."""
        version, payload = await self._read(keys=list(self._keys(user_id)))
        version = version.decode() if isinstance(version, bytes) else str(version)
        if payload is None:
            return version, None
        return version, [_room(row) for row in json.loads(payload)]

    async def put(self, user_id: uuid.UUID, version: str, rooms: list[Chatroom]) -> None:
        _, prefix = self._keys(user_id)
        payload = json.dumps([_row(room) for room in rooms])
        await self._redis.set(prefix + version, payload, ex=TTL_SECONDS)

    async def invalidate(self, user_id: uuid.UUID) -> None:
        """Called after a commit; a Redis outage must not turn a done change into an error."""
        version_key, _ = self._keys(user_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(version_key)
                pipe.expire(version_key, VERSION_TTL_SECONDS)
                await pipe.execute()
        except RedisError:
            log.warning("could not invalidate the room list of %s", user_id, exc_info=True)


def _row(room: Chatroom) -> dict[str, str | None]:
    return {
        "id": str(room.id),
        "user_id": str(room.user_id),
        "title": room.title,
        "description": room.description,
        "created_at": room.created_at.isoformat(),
        "updated_at": room.updated_at.isoformat(),
    }


def _room(row: dict[str, str]) -> Chatroom:
    return Chatroom(
        id=uuid.UUID(row["id"]),
        user_id=uuid.UUID(row["user_id"]),
        title=row["title"],
        description=row["description"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )
