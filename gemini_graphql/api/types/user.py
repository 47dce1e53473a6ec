from __future__ import annotations

from datetime import datetime

import strawberry

from gemini_graphql.api.context import Context
from gemini_graphql.chat.quota import Usage, usage_of
from gemini_graphql.models import Tier, User

SubscriptionTier = strawberry.enum(Tier, name="SubscriptionTier", description="The user's plan.")


@strawberry.type(name="Usage", description="Today's message quota (UTC day).")
class UsageType:
    used: int = strawberry.field(description="Messages sent today (UTC day).")
    limit: int = strawberry.field(description="Daily limit of the current tier.")
    remaining: int = strawberry.field(description="Messages left today.")
    resets_at: datetime = strawberry.field(description="Next UTC midnight, when `used` resets.")
    tokens_today: int = strawberry.field(
        description="Total tokens of your replies finished today (UTC day), from Gemini's "
        "usage metadata."
    )

    @classmethod
    def of(cls, usage: Usage) -> UsageType:
        return cls(
            used=usage.used,
            limit=usage.limit,
            remaining=usage.remaining,
            resets_at=usage.resets_at,
            tokens_today=usage.tokens_today,
        )


@strawberry.type(name="User", description="An account, identified by its mobile number.")
class UserType:
    id: strawberry.ID
    mobile_number: str = strawberry.field(description='E.164, e.g. "+14155550123".')
    name: str | None
    email: str | None
    tier: SubscriptionTier  # type: ignore[valid-type]
    has_password: bool = strawberry.field(
        description="Whether `loginWithPassword` can be used (else log in with a code)."
    )
    created_at: datetime
    # Computed with the user, not by a resolver: a resolver per field costs more than `me` itself.
    usage: UsageType = strawberry.field(description="Today's quota of the user's tier.")
    model: strawberry.Private[User]

    @classmethod
    def of(cls, user: User, context: Context) -> UserType:
        usage = usage_of(user, context.settings, context.services.resources.clock())
        return cls(
            id=strawberry.ID(str(user.id)),
            mobile_number=user.mobile_number,
            name=user.name,
            email=user.email,
            tier=user.tier,
            has_password=user.password_hash is not None,
            created_at=user.created_at,
            usage=UsageType.of(usage),
            model=user,
        )
