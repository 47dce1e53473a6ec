"""Stripe webhooks: verified over the raw bytes, each event applied once, in any order."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_graphql.billing.subscriptions import (
    Snapshot,
    apply_snapshot,
    extend_period,
    id_of,
    link_customer,
)
from gemini_graphql.clock import Clock
from gemini_graphql.ids import parse_id
from gemini_graphql.infra.db import Database, insert_for
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.models import StripeEvent

log = logging.getLogger(__name__)

SIGNATURE_TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE  # 300


class BadWebhook(Exception):
    """Missing, malformed, wrongly signed or stale: answered 400, nothing changes."""


class WebhookOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"  # a type we do not handle


Handler = Callable[[AsyncSession, dict[str, Any], int], Awaitable[uuid.UUID | None]]


class StripeWebhooks:
    def __init__(
        self, *, signing_secret: str | None, database: Database, users: UserCache, clock: Clock
    ) -> None:
        self._secret = signing_secret
        self._sessions = database.sessions
        self._clock = clock
        self._users = users
        # Each returns the user it changed, if any.
        self._handlers: dict[str, Handler] = {
            "checkout.session.completed": self._checkout_completed,
            "customer.subscription.created": self._subscription_changed,
            "customer.subscription.updated": self._subscription_changed,
            "customer.subscription.deleted": self._subscription_changed,
            "invoice.paid": self._invoice_paid,
            "invoice.payment_failed": self._invoice_payment_failed,
        }

    @property
    def configured(self) -> bool:
        return bool(self._secret)

    def verify(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, if `signature` is Stripe's over exactly these bytes, made recently."""
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature, self._secret, SIGNATURE_TOLERANCE_SECONDS
            )
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise BadWebhook(type(exc).__name__) from None
        if not (
            isinstance(event, dict)
            and isinstance(event.get("id"), str)
            and isinstance(event.get("type"), str)
            and isinstance(event.get("created"), int)
            and isinstance((event.get("data") or {}).get("object"), dict)
        ):
            raise BadWebhook("not an event")
        return event

    async def handle(self, event: dict[str, Any]) -> WebhookOutcome:
        """Record the event id and apply the event in one transaction: exactly once."""
        handler = self._handlers.get(event["type"])
        now = self._clock()
        async with self._sessions() as session:
            if not await _record(session, event, now):
                return WebhookOutcome.DUPLICATE
            changed = None
            if handler is not None:
                try:
                    changed = await handler(session, event["data"]["object"], event["created"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise BadWebhook(f"malformed {event['type']}: {type(exc).__name__}") from None
            await session.commit()
        if changed is not None:
            await self._users.changed(changed)
        return WebhookOutcome.APPLIED if handler else WebhookOutcome.IGNORED

    async def _checkout_completed(
        self, session: AsyncSession, obj: dict[str, Any], as_of: int
    ) -> uuid.UUID | None:
        user_id = parse_id(str(obj.get("client_reference_id") or ""))
        customer_id = id_of(obj.get("customer"))
        subscription_id = id_of(obj.get("subscription"))
        if user_id is None or customer_id is None:
            log.warning("checkout session %s has no user or customer", obj.get("id"))
            return None
        await link_customer(session, user_id, customer_id)
        if subscription_id and obj.get("payment_status") in ("paid", "no_payment_required"):
            snapshot = Snapshot(subscription_id, customer_id, user_id, status="active")
            await apply_snapshot(session, snapshot, as_of, self._clock())
        return user_id

    async def _subscription_changed(
        self, session: AsyncSession, obj: dict[str, Any], as_of: int
    ) -> uuid.UUID | None:
        return await apply_snapshot(session, Snapshot.of_subscription(obj), as_of, self._clock())

    async def _invoice_paid(self, session: AsyncSession, obj: dict[str, Any], as_of: int) -> None:
        """Only the subscription's period moves; the user's row stays as it is."""
        subscription_id = _invoice_subscription(obj)
        period_end = _invoice_period_end(obj)
        if subscription_id and period_end:
            await extend_period(session, subscription_id, period_end, self._clock())

    async def _invoice_payment_failed(
        self, session: AsyncSession, obj: dict[str, Any], as_of: int
    ) -> None:
        # The status change (to past_due) arrives as customer.subscription.updated.
        log.info("payment failed for subscription %s", _invoice_subscription(obj))


async def _record(session: AsyncSession, event: dict[str, Any], now: datetime) -> bool:
    """Insert the event id; False when it was already there (a redelivery, maybe in parallel)."""
    result = await session.execute(
        insert_for(session)(StripeEvent)
        .values(id=event["id"], type=event["type"][:100], received_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.id)
    )
    return result.first() is not None


def _invoice_subscription(obj: dict[str, Any]) -> str | None:
    # Since API version 2025-03-31 the subscription is under parent.subscription_details.
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    return id_of(details.get("subscription") or obj.get("subscription"))


def _invoice_period_end(obj: dict[str, Any]) -> datetime | None:
    ends = [
        line.get("period", {}).get("end") for line in (obj.get("lines") or {}).get("data") or []
    ]
    present = [int(end) for end in ends if end]
    return datetime.fromtimestamp(max(present), UTC) if present else None
