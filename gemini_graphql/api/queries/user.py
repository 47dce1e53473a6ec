from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.types.user import UserType


@strawberry.type
class UserQueries:
    @strawberry.field(description="The logged-in user. UNAUTHENTICATED without a valid token.")
    async def me(self, info: Info) -> UserType:
        return UserType.of(await info.context.user(), info.context)
