"""Chatrooms: creating, renaming and deleting them, and listing a user's rooms, most
recently updated first."""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlmodel import col, select

from gemini_graphql.chat.pages import (
    Page,
    decode_time_id_cursor,
    encode_cursor,
    page_size,
)
from gemini_graphql.chat.reply_stream import ReplyChannels, delete_streams
from gemini_graphql.chat.room_cache import CACHED_ROWS, RoomListCache
from gemini_graphql.chat.room_events import RoomEvent, RoomEventType
from gemini_graphql.chat.stops import FinalEvents, request_stop
from gemini_graphql.clock import Clock
from gemini_graphql.errors import DomainError, ErrorCode, invalid_input
from gemini_graphql.ids import parse_id
from gemini_graphql.infra.db import Database
from gemini_graphql.models import UNFINISHED_STATUSES, Chatroom, Message, MessageRole, loaded
from gemini_graphql.text import check_storable

log = logging.getLogger(__name__)

TITLE_MAX = 255
DESCRIPTION_MAX = 2000
INSTRUCTION_MAX = 4000
DEFAULT_PAGE = 20
_ROOMS = Chatroom.__table__  # type: ignore[attr-defined]
_MESSAGES = Message.__table__  # type: ignore[attr-defined]


class Keep(enum.Enum):
    """An omitted field of an update: it stays as it is (None clears it)."""

    KEEP = enum.auto()


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class RoomChanges:
    title: str | None | Keep = KEEP
    description: str | None | Keep = KEEP
    system_instruction: str | None | Keep = KEEP


def room_cursor(room: Chatroom) -> str:
    return encode_cursor(room.updated_at.isoformat(), str(room.id))


class Rooms:
    def __init__(
        self,
        *,
        database: Database,
        cache: RoomListCache,
        redis: Redis,
        final_events: FinalEvents,
        channels: ReplyChannels,
        clock: Clock,
    ) -> None:
        """`redis`, `final_events` and `channels` stop and forget the replies of a
        deleted room."""
        self._engine = database.engine
        self._sessions = database.sessions
        self._reads = database.reads
        self._clock = clock
        self._cache = cache
        self._redis = redis
        self._final_events = final_events
        self._channels = channels

    async def create(
        self,
        user_id: uuid.UUID,
        title: str,
        description: str | None,
        system_instruction: str | None = None,
    ) -> Chatroom:
        now = self._clock()
        room = Chatroom(
            user_id=user_id,
            title=_title(title),
            description=_optional("description", description, DESCRIPTION_MAX),
            system_instruction=_optional("systemInstruction", system_instruction, INSTRUCTION_MAX),
            created_at=now,
            updated_at=now,
        )
        async with self._sessions() as session:
            session.add(room)
            await session.commit()
        await self._cache.invalidate(
            user_id, [RoomEvent(RoomEventType.CHATROOM_CREATED, room.id, now)]
        )
        return room

    async def update(self, user_id: uuid.UUID, raw_id: str, changes: RoomChanges) -> Chatroom:
        """Omitted fields stay; None clears the description or the instruction."""
        values: dict[str, object] = {}
        if changes.title is not KEEP:
            if changes.title is None:
                raise invalid_input("title", "A chatroom needs a title: it cannot be cleared.")
            values["title"] = _title(changes.title)
        if changes.description is not KEEP:
            values["description"] = _optional("description", changes.description, DESCRIPTION_MAX)
        if changes.system_instruction is not KEEP:
            values["system_instruction"] = _optional(
                "systemInstruction", changes.system_instruction, INSTRUCTION_MAX
            )
        room_id = parse_id(raw_id)
        if room_id is None:
            raise _not_found()
        if not values:
            room = await self.owned_room(user_id, raw_id)
            if room is None:
                raise _not_found()
            return room
        now = self._clock()
        async with self._engine.begin() as connection:
            row = (
                (
                    await connection.execute(
                        sa.update(_ROOMS)
                        .where(_ROOMS.c.id == room_id, _ROOMS.c.user_id == user_id)
                        .values(**values, updated_at=now)
                        .returning(*_ROOMS.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise _not_found()
        await self._cache.invalidate(
            user_id, [RoomEvent(RoomEventType.CHATROOM_UPDATED, room_id, now)]
        )
        return loaded(Chatroom, row)

    async def delete(self, user_id: uuid.UUID, raw_id: str) -> uuid.UUID:
        """The room and its messages, in one transaction; then its replies in progress are
        stopped (their streams end STOPPED) and every reply stream of the room forgotten."""
        room_id = parse_id(raw_id)
        if room_id is None:
            raise _not_found()
        async with self._engine.begin() as connection:
            # The room's lock first (senders take it too), so no reply is added meanwhile.
            owned = await connection.execute(
                sa.select(_ROOMS.c.id)
                .where(_ROOMS.c.id == room_id, _ROOMS.c.user_id == user_id)
                .with_for_update()
            )
            if owned.first() is None:
                raise _not_found()
            replies = (
                await connection.execute(
                    sa.select(_MESSAGES.c.id, _MESSAGES.c.status).where(
                        _MESSAGES.c.chatroom_id == room_id,
                        _MESSAGES.c.role == MessageRole.ASSISTANT.value,
                    )
                )
            ).all()
            await connection.execute(sa.delete(_ROOMS).where(_ROOMS.c.id == room_id))
        now = self._clock()
        await self._cache.invalidate(
            user_id, [RoomEvent(RoomEventType.CHATROOM_DELETED, room_id, now)]
        )
        in_progress = [reply_id for reply_id, status in replies if status in UNFINISHED_STATUSES]
        try:
            # Their streams end first, then their workers are told: a worker that stops
            # because of the notice finds the final event already written.
            for reply_id in in_progress:
                await self._final_events.end_stopped(reply_id)
            if in_progress:
                await request_stop(self._redis, self._channels, in_progress)
            await delete_streams(self._redis, self._channels, [reply_id for reply_id, _ in replies])
        except RedisError:  # the room is gone; its streams expire on their own
            log.warning("could not end the reply streams of deleted room %s", room_id)
        return room_id

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


def _title(title: str) -> str:
    title = title.strip()
    if not 1 <= len(title) <= TITLE_MAX:
        raise invalid_input("title", f"The title must have 1 to {TITLE_MAX} characters.")
    check_storable("title", title)
    return title


def _optional(field: str, value: str | None, maximum: int) -> str | None:
    """Trimmed; blank is None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > maximum:
        raise invalid_input(field, f"The {_label(field)} must have at most {maximum:,} characters.")
    check_storable(field, value)
    return value


def _label(field: str) -> str:
    return "system instruction" if field == "systemInstruction" else field


def _not_found() -> DomainError:
    return DomainError(ErrorCode.NOT_FOUND, "No such chatroom.", "id")
