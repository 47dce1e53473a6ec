"""Conversation control: stop a reply, ask again, edit a question, switch versions.

Edits and regenerations are new versions (siblings in the tree, see chat.tree), stored and
queued by `Messages.add_turn` exactly like a sent message. Stopping follows chat.stops.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable

import sqlalchemy as sa
from redis.asyncio import Redis

from gemini_graphql.chat.messages import Messages, Sent, clean_content
from gemini_graphql.chat.quota import add_tokens, utc_day
from gemini_graphql.chat.reply_stream import ReplyChannels, history, text_of
from gemini_graphql.chat.room_events import RoomEvent, RoomEventChannels, RoomEventType
from gemini_graphql.chat.stops import FinalEvents, request_stop
from gemini_graphql.chat.tree import newest_leaf
from gemini_graphql.clock import Clock
from gemini_graphql.errors import DomainError, ErrorCode, invalid_input
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.relay import Relay
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.models import (
    UNFINISHED_STATUSES,
    Chatroom,
    Message,
    MessageRole,
    MessageStatus,
    loaded,
)

log = logging.getLogger(__name__)

# How long stopReply waits for the reply's worker to end it; past this (the worker died, or
# cannot reach Redis) the api ends it itself.
STOP_WAIT_SECONDS = 3.0
_ROOMS = Chatroom.__table__  # type: ignore[attr-defined]
_MESSAGES = Message.__table__  # type: ignore[attr-defined]
_STOP_PENDING = (
    sa.update(_MESSAGES)
    .where(
        _MESSAGES.c.id == sa.bindparam("reply_id"),
        _MESSAGES.c.status == MessageStatus.PENDING.value,
    )
    .values(status=MessageStatus.STOPPED.value, updated_at=sa.bindparam("now"))
    .returning(*_MESSAGES.c)
)
_STOP_STREAMING = (  # only a reply nobody finished meanwhile; the text its stream carried
    sa.update(_MESSAGES)
    .where(
        _MESSAGES.c.id == sa.bindparam("reply_id"),
        _MESSAGES.c.status.in_(sorted(status.value for status in UNFINISHED_STATUSES)),
    )
    .values(
        status=MessageStatus.STOPPED.value,
        content=sa.bindparam("content"),
        updated_at=sa.bindparam("now"),
    )
    .returning(*_MESSAGES.c)
)


class Conversation:
    def __init__(
        self,
        *,
        database: Database,
        messages: Messages,
        redis: Redis,
        final_events: FinalEvents,
        users: UserCache,
        room_events: RoomEventChannels,
        relay: Relay,
        channels: ReplyChannels,
        clock: Clock,
    ) -> None:
        """`relay`: the process's pub/sub connection, on which stopReply waits for the end."""
        self._relay = relay
        self._autocommit = database.autocommit
        self._engine = database.engine
        self._messages = messages
        self._redis = redis
        self._final_events = final_events
        self._users = users
        self._room_events = room_events
        self._channels = channels
        self._clock = clock

    async def regenerate(self, user_id: uuid.UUID, raw_id: str) -> Sent:
        """A new version of a finished reply, answering the same USER message."""
        reply = await self._owned(user_id, raw_id, MessageRole.ASSISTANT)
        if not reply.is_finished:
            raise DomainError(
                ErrorCode.REPLY_IN_PROGRESS,
                "This reply is still being written: stop it first (stopReply), then ask again.",
                "messageId",
            )
        assert reply.parent_id is not None, "every reply answers a USER message"
        question = await self._messages.get(reply.parent_id)
        if question is None:
            raise _not_found()
        return await _on_message_id(
            self._messages.add_turn(
                user_id, reply.chatroom_id, content=None, parent_id=None, question=question
            )
        )

    async def edit(self, user_id: uuid.UUID, raw_id: str, content: str) -> Sent:
        """A new version of a USER message, with its own reply."""
        content = clean_content(content)
        message = await self._owned(user_id, raw_id, MessageRole.USER)
        return await _on_message_id(
            self._messages.add_turn(
                user_id, message.chatroom_id, content=content, parent_id=message.parent_id
            )
        )

    async def select_version(self, user_id: uuid.UUID, raw_id: str) -> Chatroom:
        """The message's branch becomes current, down to its most recently created leaf."""
        message = await self._owned(user_id, raw_id, None)
        now = self._clock()
        async with self._engine.begin() as connection:
            leaf = await newest_leaf(connection, message.id)
            row = (
                (
                    await connection.execute(
                        sa.update(_ROOMS)
                        .where(_ROOMS.c.id == message.chatroom_id, _ROOMS.c.user_id == user_id)
                        .values(current_leaf_id=leaf)
                        .returning(*_ROOMS.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise _not_found()
        await self._room_events.publish(
            self._redis,
            user_id,
            [RoomEvent(RoomEventType.BRANCH_CHANGED, message.chatroom_id, now, leaf)],
        )
        return loaded(Chatroom, row)

    async def stop(self, user_id: uuid.UUID, raw_id: str) -> Message:
        """The reply, STOPPED (or as it already ended): returns once the stop took effect.

        PENDING: stopped here at once (no worker will send it to Gemini). STREAMING: the
        worker streaming it is told, ends it and writes the final event, which this waits
        for, at most STOP_WAIT_SECONDS; then it is ended here.
        """
        reply = await self._owned(user_id, raw_id, MessageRole.ASSISTANT)
        if reply.is_finished:
            return reply
        stopped = await self._settle(_STOP_PENDING, {"reply_id": reply.id}, user_id)
        if stopped is not None:
            return stopped
        await request_stop(self._redis, self._channels, [reply.id])
        try:
            async with asyncio.timeout(STOP_WAIT_SECONDS):
                async for _ in self._messages.follow(self._relay, reply.id, 0):
                    pass  # until the final event
        except TimeoutError:
            log.warning("no worker ended the stopped reply %s in time; ending it here", reply.id)
            settled = await self._settle(
                _STOP_STREAMING,
                {"reply_id": reply.id, "content": await self._streamed(reply.id)},
                user_id,
            )
            if settled is not None:
                return settled
        current = await self._messages.get(reply.id)
        if current is None:
            raise _not_found()
        return current

    async def _settle(
        self, statement: sa.Update, parameters: dict[str, object], user_id: uuid.UUID
    ) -> Message | None:
        """Stop the reply here if the statement still applies (counting the tokens it used),
        then end its stream."""
        now = self._clock()
        async with self._engine.begin() as connection:
            row = (
                (await connection.execute(statement, {**parameters, "now": now})).mappings().first()
            )
            if row is None:
                return None
            stopped = loaded(Message, row)
            if stopped.total_tokens:
                await add_tokens(connection, user_id, stopped.total_tokens, utc_day(now))
        if stopped.total_tokens:
            await self._users.changed(user_id)  # tokensToday shows them at once
        final = await self._final_events.end_stopped(stopped.id)
        if final is not None and "content" in parameters:
            text = await self._streamed(stopped.id)  # a delta its worker added meanwhile
            if text != parameters["content"]:
                async with self._engine.begin() as connection:
                    await connection.execute(
                        sa.update(_MESSAGES)
                        .where(_MESSAGES.c.id == stopped.id)
                        .values(content=text)
                    )
                stopped.content = text
        await self._room_events.publish(
            self._redis,
            user_id,
            [RoomEvent(RoomEventType.REPLY_FINISHED, stopped.chatroom_id, now, stopped.id)],
        )
        return stopped

    async def _streamed(self, reply_id: uuid.UUID) -> str:
        return text_of(await history(self._redis, self._channels, reply_id))

    async def _owned(self, user_id: uuid.UUID, raw_id: str, role: MessageRole | None) -> Message:
        message = await self._messages.owned_message(user_id, raw_id)
        if message is None:
            raise _not_found()
        if role is not None and message.role != role.value:
            which = "an ASSISTANT reply" if role is MessageRole.ASSISTANT else "a USER message"
            raise invalid_input("messageId", f"This needs the id of {which}.")
        return message


async def _on_message_id(adding: Awaitable[Sent]) -> Sent:
    """The room went after its message was found: NOT_FOUND on this input's messageId."""
    try:
        return await adding
    except DomainError as error:
        if error.code is ErrorCode.NOT_FOUND:
            raise _not_found() from None
        raise


def _not_found() -> DomainError:
    return DomainError(ErrorCode.NOT_FOUND, "No such message.", "messageId")
