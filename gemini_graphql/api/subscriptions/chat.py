from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.types.chat import ChatroomEvent, ReplyEvent
from gemini_graphql.chat.room_events import follow_room_events
from gemini_graphql.errors import DomainError, ErrorCode
from gemini_graphql.models import MessageRole


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
        async for event in messages.follow(context.services.relay, reply.id, max(after or 0, 0)):
            yield ReplyEvent(
                message_id=message_id,
                seq=event.seq,
                delta=event.delta,
                status=event.status,
                reply_id=reply.id,
                stored=finished,
            )

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
