from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.errors import payload_or_errors
from gemini_graphql.api.types.chat import (
    ChatroomType,
    CreateChatroomInput,
    CreateChatroomPayload,
    SendMessageInput,
    SendMessagePayload,
)


@strawberry.type
class ChatMutations:
    @strawberry.mutation(description="Start a new chatroom.")
    async def create_chatroom(
        self, info: Info, input: CreateChatroomInput
    ) -> CreateChatroomPayload:
        user = await info.context.user()
        created = info.context.services.rooms.create(user.id, input.title, input.description)
        return await payload_or_errors(
            CreateChatroomPayload,
            created,
            lambda room: CreateChatroomPayload(chatroom=ChatroomType.of(room)),
        )

    @strawberry.mutation(
        description="Send a message; returns at once with the PENDING reply to subscribe to."
    )
    async def send_message(self, info: Info, input: SendMessageInput) -> SendMessagePayload:
        user = await info.context.user()
        sent = info.context.services.messages.send(user.id, input.chatroom_id, input.content)
        return await payload_or_errors(SendMessagePayload, sent, SendMessagePayload.of)
