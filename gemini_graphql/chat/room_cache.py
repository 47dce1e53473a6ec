"""The first page of each user's room list, cached in Redis for ten minutes.

Writers bump a per-user version after they commit; readers read the version
first and store what they computed under it. A reader that raced a writer
stores its (stale) page under the old version, where nobody looks any more,
so the cache can never serve an outdated order.

In front of it, each process keeps its own copy (`UserCache`); the version bump
and the change notice that drops those copies go to Redis in one round trip.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gemini_graphql.chat.room_events import RoomEvent, RoomEventChannels
from gemini_graphql.config import RedisNames
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.metrics import CACHE_LOOKUPS
from gemini_graphql.models import Chatroom

log = logging.getLogger(__name__)

TTL_SECONDS = 600
VERSION_TTL_SECONDS = 86_400  # far longer than a cached page lives
CACHED_ROWS = 100  # enough for any page size the API allows
_LOCAL = {result: CACHE_LOOKUPS.labels("rooms_local", result) for result in ("hit", "miss")}
_SHARED = {result: CACHE_LOOKUPS.labels("rooms_redis", result) for result in ("hit", "miss")}

# One round trip: the version, and the page stored under it.
_READ = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', KEYS[2] .. version)}
"""


class RoomListCache:
    def __init__(
        self, redis: Redis, users: UserCache, events: RoomEventChannels, names: RedisNames
    ) -> None:
        """`events`: where the changes that invalidate the list are announced; `names`: the
        deployment's, under which the versions and pages are kept."""
        self._redis = redis
        self._names = names
        self._users = users
        self._events = events
        self._read = redis.register_script(_READ)

    def _keys(self, user_id: uuid.UUID) -> tuple[str, str]:
        """The user's version key, and the prefix of the keys of pages (+ the version)."""
        return self._names.key(f"rooms:v:{user_id}"), self._names.key(f"rooms:first:{user_id}:")

    async def first_rows(
        self, user_id: uuid.UUID, query: Callable[[], Awaitable[list[Chatroom]]]
    ) -> list[Chatroom]:
        """The first rows: the process's copy, else Redis's, else `query()` (then kept in both)."""
        rooms = self._users.rooms(user_id)
        if rooms is not None:
            _LOCAL["hit"].inc()
            return rooms
        _LOCAL["miss"].inc()
        ticket = self._users.ticket()
        version, payload = await self._read(keys=list(self._keys(user_id)))
        version = version.decode() if isinstance(version, bytes) else str(version)
        if payload is not None:
            _SHARED["hit"].inc()
            rooms = [_room(row) for row in json.loads(payload)]
        else:
            _SHARED["miss"].inc()
            rooms = await query()
            _, prefix = self._keys(user_id)
            await self._redis.set(
                prefix + version, json.dumps([_row(room) for room in rooms]), ex=TTL_SECONDS
            )
        self._users.keep_rooms(user_id, rooms, ticket)
        return rooms

    async def invalidate(self, user_id: uuid.UUID, announce: Sequence[RoomEvent] = ()) -> None:
        """Called after a commit, with the room events it makes (sent in the same round
        trip); a Redis outage must not turn a done change into an error."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await self.invalidate_on(pipe, user_id, announce)
                await pipe.execute()
        except RedisError:
            log.warning("could not invalidate the room list of %s", user_id, exc_info=True)

    async def invalidate_on(
        self, pipe: Pipeline, user_id: uuid.UUID, announce: Sequence[RoomEvent] = ()
    ) -> None:
        """`invalidate`'s commands, added to `pipe` (a transaction), for a caller that sends
        more in the same round trip; it executes `pipe` after its commit, and decides what a
        failure means."""
        version_key, _ = self._keys(user_id)
        pipe.incr(version_key)
        pipe.expire(version_key, VERSION_TTL_SECONDS)
        await self._users.changed(user_id, pipe)
        self._events.publish_into(pipe, user_id, announce)


def _row(room: Chatroom) -> dict[str, str | None]:
    return {
        "id": str(room.id),
        "user_id": str(room.user_id),
        "title": room.title,
        "description": room.description,
        "system_instruction": room.system_instruction,
        "created_at": room.created_at.isoformat(),
        "updated_at": room.updated_at.isoformat(),
    }


def _room(row: dict[str, str]) -> Chatroom:
    return Chatroom(
        id=uuid.UUID(row["id"]),
        user_id=uuid.UUID(row["user_id"]),
        title=row["title"],
        description=row["description"],
        system_instruction=row.get("system_instruction"),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )
