from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.errors import payload_or_errors
from gemini_graphql.api.types.billing import SubscribeProPayload


@strawberry.type
class BillingMutations:
    @strawberry.mutation(
        description="Start buying Pro: returns a Stripe Checkout page. PRO once Stripe confirms."
    )
    async def subscribe_pro(self, info: Info) -> SubscribeProPayload:
        user = await info.context.user()
        checkout = info.context.services.billing.subscribe_pro(user)
        return await payload_or_errors(SubscribeProPayload, checkout, SubscribeProPayload.of)
