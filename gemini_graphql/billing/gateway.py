"""The calls we make to Stripe, through the official SDK, bounded in time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import stripe

from gemini_graphql.config import Settings

log = logging.getLogger(__name__)


class PaymentsUnavailable(Exception):
    """Stripe is not configured, refused, failed or did not answer in time."""


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout = settings.stripe_timeout_seconds
        self._client: stripe.StripeClient | None = None
        if settings.payments_enabled:
            assert settings.stripe_secret_key
            self._client = stripe.StripeClient(
                settings.stripe_secret_key,
                base_addresses={"api": settings.stripe_api_base}
                if settings.stripe_api_base
                else None,
                http_client=stripe.HTTPXClient(timeout=self._timeout),
                max_network_retries=0,  # a user is waiting; they can click again
            )

    async def create_customer(
        self, user_id: uuid.UUID, mobile_number: str, email: str | None
    ) -> str:
        client = self._require_client()
        params: stripe.CustomerCreateParams = {
            "phone": mobile_number,
            "metadata": {"user_id": str(user_id)},
        }
        if email:
            params["email"] = email
        customer = await self._call(
            client.v1.customers.create_async(
                params, options={"idempotency_key": f"customer-{user_id}"}
            )
        )
        return customer.id

    async def create_checkout_session(
        self, user_id: uuid.UUID, customer_id: str, idempotency_key: str
    ) -> CheckoutSession:
        client = self._require_client()
        settings = self._settings
        metadata = {"user_id": str(user_id)}
        session = await self._call(
            client.v1.checkout.sessions.create_async(
                {
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": str(user_id),
                    "line_items": [{"price": settings.stripe_price_id or "", "quantity": 1}],
                    "metadata": metadata,
                    "subscription_data": {"metadata": metadata},
                    "success_url": settings.stripe_success_url,
                    "cancel_url": settings.stripe_cancel_url,
                },
                options={"idempotency_key": idempotency_key},
            )
        )
        if not session.url:
            raise PaymentsUnavailable("Stripe returned a session without a URL")
        return CheckoutSession(id=session.id, url=session.url)

    def _require_client(self) -> stripe.StripeClient:
        if self._client is None:
            raise PaymentsUnavailable("Stripe is not configured")
        return self._client

    async def _call(self, request):  # type: ignore[no-untyped-def]
        try:
            async with asyncio.timeout(self._timeout + 1):
                return await request
        except TimeoutError as exc:
            raise PaymentsUnavailable("Stripe did not answer in time") from exc
        except stripe.StripeError as exc:
            # The message may quote our request; log the type and code, not the content.
            log.warning("Stripe refused a request: %s %s", type(exc).__name__, exc.code)
            raise PaymentsUnavailable(type(exc).__name__) from exc
