from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.types.chat import ChatroomConnection, ChatroomType


@strawberry.type
class ChatQueries:
    @strawberry.field(
        description="Your chatrooms, most recently updated first. At most 100 a page."
    )
    async def chatrooms(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> ChatroomConnection:
        user = await info.context.user()
        page = await info.context.services.rooms.page(user.id, first, after)
        return ChatroomConnection.of(page)

    @strawberry.field(description="One of your chatrooms; null for an unknown id or anyone else's.")
    async def chatroom(self, info: Info, id: strawberry.ID) -> ChatroomType | None:
        user = await info.context.user()
        room = await info.context.services.rooms.owned_room(user.id, id)
        return ChatroomType.of(room) if room else None
