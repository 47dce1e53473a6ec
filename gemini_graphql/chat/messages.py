"""Sending messages, and reading them back page by page along the current branch.

Every new turn (a sent message, an edited one, a regenerated reply) is stored the same
way, by `add_turn`: counted against the quota and written in one transaction with its
PENDING reply, which becomes the room's current leaf, then queued for a worker.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select

from gemini_graphql.chat.pages import Page, decode_id_cursor, encode_cursor, page_size
from gemini_graphql.chat.quota import Usage, consume_one, give_back_one, utc_day
from gemini_graphql.chat.reply_queue import enqueue_reply
from gemini_graphql.chat.reply_stream import ReplyChannels, Stored, StreamEvent, follow
from gemini_graphql.chat.room_cache import RoomListCache
from gemini_graphql.chat.room_events import RoomEvent, RoomEventType
from gemini_graphql.chat.tree import VersionGroup, branch_rows, versions_of
from gemini_graphql.clock import Clock
from gemini_graphql.config import Settings
from gemini_graphql.errors import DomainError, ErrorCode, InvalidArgument, invalid_input
from gemini_graphql.ids import new_id, parse_id
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.relay import Relay
from gemini_graphql.models import (
    Chatroom,
    Message,
    MessageRole,
    MessageStatus,
    Subscription,
    loaded,
)
from gemini_graphql.text import check_storable

if TYPE_CHECKING:
    from gemini_graphql.infra.otel import Tracing

log = logging.getLogger(__name__)

CONTENT_MAX = 10_000
DEFAULT_PAGE = 20
_ROOMS = Chatroom.__table__  # type: ignore[attr-defined]
_MESSAGES = Message.__table__  # type: ignore[attr-defined]
# Built once: SQLAlchemy then works out their compiled-cache keys once, not per call.
_BY_ID = sa.select(_MESSAGES).where(_MESSAGES.c.id == sa.bindparam("id"))
_BUMP_ROOM = (
    sa.update(_ROOMS)
    .where(_ROOMS.c.id == sa.bindparam("room_id"), _ROOMS.c.user_id == sa.bindparam("owner_id"))
    .values(updated_at=sa.bindparam("now"))
    .returning(_ROOMS.c.id, _ROOMS.c.current_leaf_id)  # the leaf as it is: this sets no leaf
)
_SET_LEAF = (
    sa.update(_ROOMS)
    .where(_ROOMS.c.id == sa.bindparam("room_id"))
    .values(current_leaf_id=sa.bindparam("leaf_id"))
)
_INSERT_MESSAGES = sa.insert(_MESSAGES)
_OWNED = (
    sa.select(_MESSAGES)
    .join(_ROOMS, _ROOMS.c.id == _MESSAGES.c.chatroom_id)
    .where(_MESSAGES.c.id == sa.bindparam("id"), _ROOMS.c.user_id == sa.bindparam("owner_id"))
)


class Leaf(enum.Enum):
    """Where a sent message goes: after the room's current leaf, whatever it is by then."""

    CURRENT = enum.auto()


def clean_content(content: str) -> str:
    content = content.strip()
    if not 1 <= len(content) <= CONTENT_MAX:
        raise invalid_input("content", f"A message has 1 to {CONTENT_MAX:,} characters.")
    check_storable("content", content)
    return content


def message_cursor(message: Message) -> str:
    return encode_cursor(str(message.id))


@dataclass(frozen=True, slots=True)
class Sent:
    message: Message
    reply: Message
    usage: Usage


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Hashable, so a DataLoader can batch rooms asking for the same page shape."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None


class Messages:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        redis: ArqRedis,
        rooms_cache: RoomListCache,
        clock: Clock,
        tracing: Tracing | None = None,
    ) -> None:
        """`redis` queues replies and holds their streams; `settings` the quota, the streams'
        idle timeout and the deployment's Redis names."""
        self._settings = settings
        self._sessions = database.sessions
        self._engine = database.engine
        self._reads = database.reads
        self._autocommit = database.autocommit
        self._clock = clock
        self._queue = redis
        self._rooms_cache = rooms_cache  # a new message moves its room to the top
        self._tracing = tracing  # None: tracing is off, and jobs carry no trace context
        self._idle_timeout = settings.stream_idle_timeout_seconds
        self._names = settings.redis_names
        self._channels = ReplyChannels(self._names)

    async def send(self, user_id: uuid.UUID, raw_room_id: str, content: str) -> Sent:
        """Store the message and a PENDING reply, count it, and queue the reply; never waits for it."""
        room_id = parse_id(raw_room_id)
        content = clean_content(content)
        if room_id is None:
            raise _room_not_found()
        return await self.add_turn(user_id, room_id, content=content, parent_id=Leaf.CURRENT)

    async def add_turn(
        self,
        user_id: uuid.UUID,
        room_id: uuid.UUID,
        *,
        content: str | None,
        parent_id: uuid.UUID | None | Leaf,
        question: Message | None = None,
    ) -> Sent:
        """A new USER message (`content`, under `parent_id`) and its PENDING reply; or, with
        `question` and no content, a new reply to that USER message. Either way the reply
        becomes the room's current leaf, one message is counted, and the reply is queued."""
        now = self._clock()
        message = question
        if content is not None:
            message = Message(
                id=new_id(),
                chatroom_id=room_id,
                role=MessageRole.USER.value,
                content=content,
                status=MessageStatus.COMPLETE.value,
                created_at=now,
                updated_at=now,
            )
        assert message is not None, "a turn needs content or the question it answers again"
        reply = Message(
            id=new_id(),
            chatroom_id=room_id,
            role=MessageRole.ASSISTANT.value,
            parent_id=message.id,
            status=MessageStatus.PENDING.value,
            created_at=now,
            updated_at=now,
        )
        new = [message, reply] if content is not None else [reply]
        # Four statements in one transaction, without an ORM session (this is the hot write
        # path). Locks are taken room first, then user, like every other writer of both.
        async with self._engine.begin() as connection:
            bumped = (
                await connection.execute(
                    _BUMP_ROOM, {"room_id": room_id, "owner_id": user_id, "now": now}
                )
            ).first()
            if bumped is None:
                raise _room_not_found()
            previous_leaf = bumped.current_leaf_id
            usage = await consume_one(connection, user_id, self._settings, now)
            if usage is None:
                raise await _limit_reached(connection, user_id)
            if content is not None:
                message.parent_id = previous_leaf if parent_id is Leaf.CURRENT else parent_id
            await connection.execute(_INSERT_MESSAGES, [_row(row) for row in new])
            await connection.execute(_SET_LEAF, {"room_id": room_id, "leaf_id": reply.id})
        added = [RoomEvent(RoomEventType.MESSAGE_ADDED, room_id, now, row.id) for row in new]
        await self._rooms_cache.invalidate(user_id, added)
        try:
            trace = self._tracing.inject() if self._tracing is not None else None
            if not await enqueue_reply(self._queue, self._names, reply.id, trace=trace):
                raise RuntimeError("a job for this reply already exists")
        except Exception:
            log.exception("could not queue the reply %s; undoing the turn", reply.id)
            await self._undo_turn(user_id, new, previous_leaf, now)
            raise DomainError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "The assistant is unavailable right now; your message was not sent. Try again.",
            ) from None
        return Sent(message=message, reply=reply, usage=usage)

    async def _undo_turn(
        self,
        user_id: uuid.UUID,
        new: list[Message],
        previous_leaf: uuid.UUID | None,
        now: datetime,
    ) -> None:
        room_id, reply_id = new[-1].chatroom_id, new[-1].id
        async with self._sessions() as session:
            await session.execute(
                sa.delete(Message).where(col(Message.id).in_([row.id for row in reversed(new)]))
            )
            # Back to its newest remaining message (or its creation), unless sent to since.
            newest = (
                sa.select(sa.func.max(Message.created_at))
                .where(Message.chatroom_id == room_id)
                .scalar_subquery()
            )
            await session.execute(
                sa.update(Chatroom)
                .where(col(Chatroom.id) == room_id, Chatroom.updated_at == now)
                .values(updated_at=sa.func.coalesce(newest, Chatroom.created_at))
            )
            await session.execute(
                sa.update(Chatroom)
                .where(col(Chatroom.id) == room_id, col(Chatroom.current_leaf_id) == reply_id)
                .values(current_leaf_id=previous_leaf)
            )
            await give_back_one(session, user_id, utc_day(now))
            await session.commit()
        await self._rooms_cache.invalidate(user_id)

    async def owned_message(self, user_id: uuid.UUID, raw_id: str) -> Message | None:
        """The message, if it exists and is in one of the user's rooms."""
        message_id = parse_id(raw_id)
        if message_id is None:
            return None
        return await _one(self._autocommit, _OWNED, {"id": message_id, "owner_id": user_id})

    async def get(self, message_id: uuid.UUID) -> Message | None:
        return await message_by_id(self._autocommit, message_id)

    def follow(
        self,
        relay: Relay,
        reply_id: uuid.UUID,
        after: int,
        push: Callable[[StreamEvent], bool] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The reply's events after `after`; a finished reply whose stream expired is replayed
        from the database as one final event (carrying the whole text when `after` is 0).
        `push`: see reply_stream.follow."""

        async def stored(last: int) -> Stored:
            message = await self.get(reply_id)
            if message is None:
                return None
            if not message.is_finished:
                return MessageStatus(message.status)
            delta = message.content if last == 0 else ""
            return StreamEvent(seq=last + 1, delta=delta, status=MessageStatus(message.status))

        return follow(
            self._queue,
            relay,
            self._channels,
            reply_id,
            after,
            stored,
            idle_timeout=self._idle_timeout,
            push=push,
        )

    async def versions(self, groups: Sequence[VersionGroup]) -> dict[VersionGroup, list[Message]]:
        """The versions of each group (room, parent), oldest first, in one statement."""
        async with self._autocommit.connect() as connection:
            return await versions_of(connection, groups)

    async def pages(
        self, room_ids: Sequence[uuid.UUID], request: PageRequest
    ) -> list[Page[Message]]:
        """The same page of several rooms' current branches, in one statement (see chat.tree)."""
        if request.first is not None and request.last is not None:
            raise InvalidArgument("Pass `first` or `last`, not both.")
        backwards = request.last is not None or (request.first is None and request.after is None)
        size = page_size(
            request.last if backwards else request.first,
            DEFAULT_PAGE,
            "last" if backwards else "first",
        )
        cursor = request.before if backwards else request.after
        cursor_id = decode_id_cursor(cursor) if cursor else None

        async with self._autocommit.connect() as connection:
            rows = await branch_rows(
                connection, room_ids, backwards=backwards, limit=size + 1, cursor=cursor_id
            )

        by_room: dict[uuid.UUID, list[Message]] = {room_id: [] for room_id in room_ids}
        for row in rows:
            by_room[row.chatroom_id].append(row)
        pages = []
        for room_id in room_ids:
            items = by_room[room_id]
            more = len(items) > size
            if backwards:
                items = items[1:] if more else items  # oldest extra row dropped
                pages.append(Page(items=items, has_next=cursor_id is not None, has_previous=more))
            else:
                items = items[:size]
                pages.append(Page(items=items, has_next=more, has_previous=cursor_id is not None))
        return pages


async def message_by_id(autocommit: AsyncEngine, message_id: uuid.UUID) -> Message | None:
    return await _one(autocommit, _BY_ID, {"id": message_id})


async def _one(
    autocommit: AsyncEngine, statement: sa.Select[Any], parameters: dict[str, Any]
) -> Message | None:
    # Core on an autocommit connection: subscriptions and replies run these all the time,
    # and an ORM session cost several times the query.
    async with autocommit.connect() as connection:
        row = (await connection.execute(statement, parameters)).mappings().first()
    return loaded(Message, row) if row is not None else None


async def _limit_reached(connection: AsyncConnection, user_id: uuid.UUID) -> DomainError:
    payment_failed = await connection.scalar(
        select(sa.func.count())
        .select_from(Subscription)
        .where(
            Subscription.user_id == user_id, col(Subscription.status).in_(("past_due", "unpaid"))
        )
    )
    if payment_failed:
        message = (
            "You have used today's Basic messages. Your Pro plan is paused because the last "
            "payment failed: update your payment method to get Pro back."
        )
    else:
        message = (
            "You have used today's messages on your plan. Upgrade to Pro (the subscribePro "
            "mutation) for more, or come back after midnight UTC."
        )
    return DomainError(ErrorCode.DAILY_LIMIT_REACHED, message)


def _row(message: Message) -> dict[str, object]:
    return {column.name: getattr(message, column.name) for column in _MESSAGES.columns}


def _room_not_found() -> DomainError:
    return DomainError(ErrorCode.NOT_FOUND, "No such chatroom.", "chatroomId")
