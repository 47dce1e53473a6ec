"""Sending messages, and reading them back page by page along the current branch.

Every new turn (a sent message, an edited one, a regenerated reply) is stored the same
way, by `add_turn`: counted against the quota and written all or nothing with its PENDING
reply, which becomes the room's current leaf (one statement on PostgreSQL, a transaction on
SQLite), then queued for a worker.
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
from gemini_graphql.chat.quota import (
    Usage,
    consume_one,
    consume_parameters,
    consuming,
    counted,
    give_back_one,
    utc_day,
)
from gemini_graphql.chat.reply_queue import reply_job
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
# SQLite's turn: four statements in a BEGIN IMMEDIATE transaction (which serialises writers).
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


def _turn_statement(*, with_message: bool) -> sa.Select[Any]:
    """PostgreSQL's turn, one statement (so atomic without a transaction: one round trip,
    where BEGIN, four statements and COMMIT took six). Locks the room (FOR UPDATE: the
    latest version of its row, waiting for a writer that holds it), then counts the message
    against the user's quota, which waits for the user's row: room first, then user, as
    every writer of both. Only when both succeed are the room bumped (its current leaf
    becoming the reply) and the messages inserted; else nothing is written. Returns the
    room's leaf before the turn and the count and tier consume_one's UPDATE returns (NULL:
    the quota is used up), or no row when the room is not the user's.

    `with_message`: a new USER message (`message_id`, `message_content`, under the room's
    leaf when `after_leaf`, else under `message_parent_id`) and its reply; else only a reply
    to `message_id`. The user is `owner_id` (consume_parameters'), in the room and the quota.
    """
    room = (
        sa.select(_ROOMS.c.id, _ROOMS.c.current_leaf_id)
        .where(_ROOMS.c.id == sa.bindparam("room_id"), _ROOMS.c.user_id == sa.bindparam("owner_id"))
        .with_for_update()
        .cte("room")
    )
    # The room's row is locked before this is evaluated: the gate is a one-time filter.
    consumed = consuming(sa.exists(room.select())).cte("consumed")
    bumped = (
        sa.update(_ROOMS)
        .where(_ROOMS.c.id == room.c.id, sa.exists(consumed.select()))
        .values(updated_at=sa.bindparam("now"), current_leaf_id=sa.bindparam("reply_id"))
        .returning(room.c.current_leaf_id.label("previous"))
        .cte("bumped")
    )
    now = sa.bindparam("now", type_=_MESSAGES.c.created_at.type)

    def row(id_: str, role: MessageRole, parent: Any, content: Any, status: MessageStatus) -> Any:
        return sa.select(
            sa.bindparam(id_, type_=sa.Uuid),
            sa.bindparam("room_id", type_=sa.Uuid),
            sa.literal(role.value),
            parent,
            content,
            sa.literal(status.value),
            now,
            now,
        ).select_from(bumped)

    message_id = sa.bindparam("message_id", type_=sa.Uuid)
    reply = row(
        "reply_id", MessageRole.ASSISTANT, message_id, sa.literal(""), MessageStatus.PENDING
    )
    rows = reply
    if with_message:
        parent = sa.case(
            (sa.bindparam("after_leaf", type_=sa.Boolean), bumped.c.previous),
            else_=sa.bindparam("message_parent_id", type_=sa.Uuid),
        )
        content = sa.bindparam("message_content", type_=sa.Text)
        message = row("message_id", MessageRole.USER, parent, content, MessageStatus.COMPLETE)
        rows = sa.union_all(message, reply)
    columns = ["id", "chatroom_id", "role", "parent_id", "content", "status"]
    inserted = (
        sa.insert(_MESSAGES)
        .from_select([*columns, "created_at", "updated_at"], rows)
        .cte("inserted")
    )
    return (
        sa.select(
            room.c.current_leaf_id, consumed.c.daily_message_count, consumed.c.subscription_tier
        )
        .select_from(room.outerjoin(consumed, sa.true()))
        .add_cte(inserted)
    )


_TURN = _turn_statement(with_message=True)
_ANSWER_AGAIN = _turn_statement(with_message=False)
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
        # PostgreSQL writes a turn in one statement; SQLite, which has no FOR UPDATE nor
        # data-modifying CTEs, in a transaction of four.
        self._one_statement = self._engine.dialect.name == "postgresql"

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
        if content is not None:
            message_id = new_id()  # first: ids are time-ordered, and the message comes first
        else:
            assert question is not None, "a turn needs content or the question it answers again"
            message_id = question.id
        reply_id = new_id()
        previous_leaf, usage = await self._write_turn(
            user_id, room_id, now, message_id, reply_id, content, parent_id
        )
        parent = previous_leaf if parent_id is Leaf.CURRENT else parent_id
        rows = _turn_rows(room_id, now, message_id, reply_id, content, parent)
        # Built as the ORM loads a row (models.loaded): these are the rows just written.
        new = [loaded(Message, row) for row in rows]
        message, reply = (new[0] if content is not None else question), new[-1]
        assert message is not None
        added = [RoomEvent(RoomEventType.MESSAGE_ADDED, room_id, now, row.id) for row in new]
        try:
            trace = self._tracing.inject() if self._tracing is not None else None
            job = reply_job(self._queue, self._names, reply_id, trace=trace)
            # One round trip: the room list's invalidation with the room events, then the
            # job with its wake-up notice. The invalidation's own failures are only logged
            # (the turn is done); the job's undo the turn.
            async with self._queue.pipeline(transaction=True) as pipe:
                await self._rooms_cache.invalidate_on(pipe, user_id, added)
                job.queue_on(pipe)
                *invalidated, queued = await pipe.execute(raise_on_error=False)
            if errors := [result for result in invalidated if isinstance(result, Exception)]:
                log.warning("could not invalidate the room list of %s: %r", user_id, errors)
            if not await job.queued(queued):
                raise RuntimeError("a job for this reply already exists")
        except Exception:
            log.exception("could not queue the reply %s; undoing the turn", reply_id)
            await self._undo_turn(user_id, new, previous_leaf, now)
            raise DomainError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "The assistant is unavailable right now; your message was not sent. Try again.",
            ) from None
        return Sent(message=message, reply=reply, usage=usage)

    async def _write_turn(
        self,
        user_id: uuid.UUID,
        room_id: uuid.UUID,
        now: datetime,
        message_id: uuid.UUID,
        reply_id: uuid.UUID,
        content: str | None,
        parent_id: uuid.UUID | None | Leaf,
    ) -> tuple[uuid.UUID | None, Usage]:
        """Writes the turn (see add_turn), all or nothing; returns the room's leaf before it,
        and the usage with it counted."""
        if self._one_statement:
            # (No parameter is named as a column: SQLAlchemy would SET it in the UPDATEs.)
            parameters: dict[str, Any] = consume_parameters(user_id, self._settings, now) | {
                "room_id": room_id,
                "now": now,
                "message_id": message_id,
                "reply_id": reply_id,
            }
            statement = _ANSWER_AGAIN
            if content is not None:
                statement = _TURN
                parameters["message_content"] = content
                parameters["after_leaf"] = parent_id is Leaf.CURRENT
                parameters["message_parent_id"] = None if parent_id is Leaf.CURRENT else parent_id
            async with self._autocommit.connect() as connection:
                found = (await connection.execute(statement, parameters)).first()
                if found is None:
                    raise _room_not_found()
                previous_leaf, used, tier = found
                if used is None:
                    raise await _limit_reached(connection, user_id)
            return previous_leaf, counted(used, tier, self._settings, now)

        # Four statements in one transaction, without an ORM session. Locks are taken room
        # first, then user, like every other writer of both (and BEGIN IMMEDIATE serialises
        # SQLite's transactions anyway).
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
            parent = previous_leaf if parent_id is Leaf.CURRENT else parent_id
            rows = _turn_rows(room_id, now, message_id, reply_id, content, parent)
            await connection.execute(_INSERT_MESSAGES, rows)
            await connection.execute(_SET_LEAF, {"room_id": room_id, "leaf_id": reply_id})
        return previous_leaf, usage

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


def _turn_rows(
    room_id: uuid.UUID,
    now: datetime,
    message_id: uuid.UUID,
    reply_id: uuid.UUID,
    content: str | None,
    parent_id: uuid.UUID | None,
) -> list[dict[str, object]]:
    """A turn's new rows, every column: the USER message (when `content`: COMPLETE, under
    `parent_id`), then its PENDING reply."""
    reply = _new_row(reply_id, room_id, MessageRole.ASSISTANT, message_id, "", now)
    if content is None:
        return [reply]
    return [_new_row(message_id, room_id, MessageRole.USER, parent_id, content, now), reply]


def _new_row(
    message_id: uuid.UUID,
    room_id: uuid.UUID,
    role: MessageRole,
    parent_id: uuid.UUID | None,
    content: str,
    now: datetime,
) -> dict[str, object]:
    status = MessageStatus.COMPLETE if role is MessageRole.USER else MessageStatus.PENDING
    return {
        "id": message_id,
        "chatroom_id": room_id,
        "role": role.value,
        "parent_id": parent_id,
        "content": content,
        "status": status.value,
        "error": None,
        "gemini_response_id": None,
        "prompt_tokens": None,
        "output_tokens": None,
        "total_tokens": None,
        "created_at": now,
        "updated_at": now,
    }


def _room_not_found() -> DomainError:
    return DomainError(ErrorCode.NOT_FOUND, "No such chatroom.", "chatroomId")
