from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.types.billing import SubscriptionStatus


@strawberry.type
class BillingQueries:
    @strawberry.field(description="Your plan and the state of your Stripe subscription.")
    async def subscription_status(self, info: Info) -> SubscriptionStatus:
        user = await info.context.user()
        return SubscriptionStatus.of(await info.context.services.billing.status(user))
