from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.transport.direct import Sink, operation_sink
from gemini_graphql.api.types.chat import ChatroomEvent, ReplyEvent
from gemini_graphql.chat.reply_stream import StreamEvent
from gemini_graphql.chat.room_events import follow_room_events
from gemini_graphql.errors import DomainError, ErrorCode
from gemini_graphql.models import Message, MessageRole


class _ReplyEvents:
    """One messageStream's events as ReplyEvents, and the push that hands them to the
    transport's sink. An object of slots, not closures: every idle subscription holds one."""

    __slots__ = ("finished", "message_id", "reply_id", "sink")

    def __init__(
        self,
        message_id: strawberry.ID,
        reply_id: uuid.UUID,
        finished: Message | None,
        sink: Sink | None,
    ) -> None:
        self.message_id = message_id
        self.reply_id = reply_id
        self.finished = finished
        self.sink = sink

    def of(self, event: StreamEvent) -> ReplyEvent:
        return ReplyEvent(
            message_id=self.message_id,
            seq=event.seq,
            delta=event.delta,
            status=event.status,
            reply_id=self.reply_id,
            stored=self.finished,
        )

    def __call__(self, event: StreamEvent) -> bool:
        """reply_stream.follow's push."""
        return self.sink is not None and self.sink(self.of(event))


@strawberry.type
class ChatSubscriptions:
    @strawberry.subscription(
        description="A reply as it is written. Late or returning subscribers first get what they "
        "missed (`after` skips seq <= after), then the live rest; completes after the final event."
    )
    async def message_stream(
        self, info: Info, message_id: strawberry.ID, after: int | None = 0
    ) -> AsyncGenerator[ReplyEvent, None]:
        context = info.context
        # The stream may stay open for hours: let go of `info`, which holds graphql-core's
        # whole executor for the operation (a few KB per idle subscription).
        del info
        user = await context.user()
        messages = context.services.messages
        reply = await messages.owned_message(user.id, message_id)
        if reply is None or reply.role != MessageRole.ASSISTANT.value:
            raise DomainError(ErrorCode.NOT_FOUND, "No such reply.", "messageId")
        finished = reply if reply.is_finished else None  # a finished reply does not change
        events = _ReplyEvents(message_id, reply.id, finished, operation_sink())
        relay, start = context.services.relay, max(after or 0, 0)
        push = events if events.sink is not None else None  # the transport may write them
        async for event in messages.follow(relay, reply.id, start, push):
            yield events.of(event)

    @strawberry.subscription(
        description="What happens in your rooms (or one room, with chatroomId) on every "
        "device and connection, from the moment the subscription starts: a reconnecting "
        "client refetches what it missed."
    )
    async def chatroom_events(
        self, info: Info, chatroom_id: strawberry.ID | None = None
    ) -> AsyncGenerator[ChatroomEvent, None]:
        context = info.context
        del info  # held for hours: see message_stream
        user = await context.user()
        services = context.services
        room_id = None
        if chatroom_id is not None:
            room = await services.rooms.owned_room(user.id, chatroom_id)
            if room is None:
                raise DomainError(ErrorCode.NOT_FOUND, "No such chatroom.", "chatroomId")
            room_id = room.id
        events = follow_room_events(services.relay, services.room_events, user.id, room_id)
        async for event in events:
            yield ChatroomEvent.of(event, user.id)
