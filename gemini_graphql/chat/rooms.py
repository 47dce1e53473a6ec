"""Chatrooms: creating them, and listing a user's rooms, most recently updated first."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlmodel import col, select

from gemini_graphql.chat.pages import (
    Page,
    decode_time_id_cursor,
    encode_cursor,
    page_size,
)
from gemini_graphql.chat.room_cache import CACHED_ROWS, RoomListCache
from gemini_graphql.clock import Clock
from gemini_graphql.errors import invalid_input
from gemini_graphql.ids import parse_id
from gemini_graphql.infra.db import Database
from gemini_graphql.models import Chatroom
from gemini_graphql.text import check_storable

TITLE_MAX = 255
DESCRIPTION_MAX = 2000
DEFAULT_PAGE = 20


def room_cursor(room: Chatroom) -> str:
    return encode_cursor(room.updated_at.isoformat(), str(room.id))


class Rooms:
    def __init__(self, *, database: Database, cache: RoomListCache, clock: Clock) -> None:
        self._sessions = database.sessions
        self._reads = database.reads
        self._clock = clock
        self._cache = cache

    async def create(self, user_id: uuid.UUID, title: str, description: str | None) -> Chatroom:
        title = title.strip()
        if not 1 <= len(title) <= TITLE_MAX:
            raise invalid_input("title", f"The title must have 1 to {TITLE_MAX} characters.")
        check_storable("title", title)
        if description is not None:
            description = description.strip() or None
        if description is not None and len(description) > DESCRIPTION_MAX:
            raise invalid_input(
                "description", f"The description must have at most {DESCRIPTION_MAX} characters."
            )
        if description is not None:
            check_storable("description", description)
        now = self._clock()
        room = Chatroom(
            user_id=user_id, title=title, description=description, created_at=now, updated_at=now
        )
        async with self._sessions() as session:
            session.add(room)
            await session.commit()
        await self._cache.invalidate(user_id)
        return room

    async def owned_room(self, user_id: uuid.UUID, raw_id: str) -> Chatroom | None:
        """The room, if it exists and is the user's; anyone else's does not exist."""
        room_id = parse_id(raw_id)
        if room_id is None:
            return None
        async with self._reads() as session:
            room = await session.get(Chatroom, room_id)
        return room if room is not None and room.user_id == user_id else None

    async def page(
        self, user_id: uuid.UUID, first: int | None, after: str | None
    ) -> Page[Chatroom]:
        size = page_size(first, DEFAULT_PAGE, "first")
        if after is None:
            cached = await self._cache.first_rows(
                user_id, lambda: self._query(user_id, CACHED_ROWS + 1, None)
            )
            return Page(items=cached[:size], has_next=len(cached) > size, has_previous=False)
        rows = await self._query(user_id, size + 1, decode_time_id_cursor(after))
        return Page(items=rows[:size], has_next=len(rows) > size, has_previous=True)

    async def _query(
        self, user_id: uuid.UUID, limit: int, after: tuple[object, uuid.UUID] | None
    ) -> list[Chatroom]:
        query = select(Chatroom).where(Chatroom.user_id == user_id)
        if after is not None:
            query = query.where(sa.tuple_(Chatroom.updated_at, Chatroom.id) < sa.tuple_(*after))
        query = query.order_by(col(Chatroom.updated_at).desc(), col(Chatroom.id).desc()).limit(
            limit
        )
        async with self._reads() as session:
            return list((await session.execute(query)).scalars())
