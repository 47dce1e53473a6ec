from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.types.chat import ReplyEvent
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
