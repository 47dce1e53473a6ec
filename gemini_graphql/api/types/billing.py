from __future__ import annotations

from datetime import datetime

import strawberry

from gemini_graphql.api.errors import UserError
from gemini_graphql.api.types.user import SubscriptionTier
from gemini_graphql.billing.gateway import CheckoutSession
from gemini_graphql.billing.subscriptions import Status


@strawberry.type
class SubscriptionStatus:
    tier: SubscriptionTier  # type: ignore[valid-type]
    status: str = strawberry.field(
        description='"none", or Stripe\'s subscription status: active, trialing, past_due, canceled, ...'
    )
    current_period_end: datetime | None
    cancel_at_period_end: bool

    @classmethod
    def of(cls, status: Status) -> SubscriptionStatus:
        return cls(
            tier=status.tier,
            status=status.status,
            current_period_end=status.current_period_end,
            cancel_at_period_end=status.cancel_at_period_end,
        )


@strawberry.type
class SubscribeProPayload:
    checkout_url: str | None = strawberry.field(
        default=None, description="The Stripe Checkout page to send the user to."
    )
    session_id: str | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)

    @classmethod
    def of(cls, session: CheckoutSession) -> SubscribeProPayload:
        return cls(checkout_url=session.url, session_id=session.id)
