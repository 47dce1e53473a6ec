"""subscribePro: a Stripe Checkout Session for the Pro plan."""

from __future__ import annotations

from gemini_graphql.billing.gateway import CheckoutSession, PaymentsUnavailable, StripeGateway
from gemini_graphql.billing.subscriptions import Status, link_customer, status_of
from gemini_graphql.clock import Clock
from gemini_graphql.errors import DomainError, ErrorCode
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.models import Tier, User

# A double click within this window gets the same session (Stripe idempotency keys).
IDEMPOTENCY_WINDOW_SECONDS = 600


class Billing:
    def __init__(
        self, *, database: Database, users: UserCache, gateway: StripeGateway, clock: Clock
    ) -> None:
        self._sessions = database.sessions
        self._clock = clock
        self._users = users
        self._gateway = gateway

    async def subscribe_pro(self, user: User) -> CheckoutSession:
        if user.tier is Tier.PRO:
            raise DomainError(ErrorCode.ALREADY_SUBSCRIBED, "You are already on the Pro plan.")
        try:
            customer_id = user.stripe_customer_id or await self._new_customer(user)
            window = int(self._clock().timestamp()) // IDEMPOTENCY_WINDOW_SECONDS
            return await self._gateway.create_checkout_session(
                user.id, customer_id, idempotency_key=f"checkout-{user.id}-{window}"
            )
        except PaymentsUnavailable:
            raise DomainError(
                ErrorCode.PAYMENTS_UNAVAILABLE,
                "Payments are unavailable right now. Please try again later.",
            ) from None

    async def status(self, user: User) -> Status:
        async with self._sessions() as session:
            return await status_of(session, user)

    async def _new_customer(self, user: User) -> str:
        customer_id = await self._gateway.create_customer(user.id, user.mobile_number, user.email)
        async with self._sessions() as session:
            await link_customer(session, user.id, customer_id)
            await session.commit()
        await self._users.changed(user.id)
        return customer_id
