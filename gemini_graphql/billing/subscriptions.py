"""Subscription state from Stripe's snapshots, and the tier it decides.

Stripe does not deliver events in order. Each stored state remembers the
`created` time of the event it came from, and a snapshot is applied only if
it is newer (see `supersedes`). `canceled` and `incomplete_expired` are
final in Stripe, so they win whenever they arrive. Every event is thus a
snapshot the row either takes or ignores, and any delivery order of the same
events ends in the same state.

The user is PRO exactly while one of their subscriptions is `active` or
`trialing`. `past_due` (a renewal payment failed; Stripe is retrying) is
BASIC: the user keeps their chats and gets the Basic limit, and the
daily-limit message tells them to update their payment method.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gemini_graphql.ids import new_id
from gemini_graphql.infra.db import insert_for
from gemini_graphql.models import Subscription, Tier, User

log = logging.getLogger(__name__)

PRO_STATUSES = frozenset({"active", "trialing"})
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Among snapshots of the same second, the one further along the lifecycle wins.
_LIFECYCLE = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "paused": 3,
    "past_due": 3,
    "unpaid": 4,
    "canceled": 5,
    "incomplete_expired": 5,
}
_PLACEHOLDER = "incomplete"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one event says about one subscription. None means 'not said': keep what is stored."""

    subscription_id: str
    customer_id: str | None
    user_id: uuid.UUID | None
    status: str
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool | None = None

    @classmethod
    def of_subscription(cls, obj: dict[str, Any]) -> Snapshot:
        items = (obj.get("items") or {}).get("data") or []
        # Since API version 2025-03-31 the periods are on the items; before, on the subscription.
        start = obj.get("current_period_start") or _max(
            item.get("current_period_start") for item in items
        )
        end = obj.get("current_period_end") or _max(
            item.get("current_period_end") for item in items
        )
        return cls(
            subscription_id=str(obj["id"]),
            customer_id=id_of(obj.get("customer")),
            user_id=_uuid((obj.get("metadata") or {}).get("user_id")),
            status=str(obj["status"]),
            current_period_start=_time(start),
            current_period_end=_time(end),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end", False)),
        )


@dataclass(frozen=True, slots=True)
class Status:
    tier: Tier
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool


def supersedes(new_status: str, new_as_of: int, status: str, as_of: int) -> bool:
    """Whether a snapshot (new_status, new_as_of) replaces the stored (status, as_of)."""
    if status in FINAL_STATUSES:
        return new_status in FINAL_STATUSES and new_as_of > as_of
    if new_status in FINAL_STATUSES:
        return True
    if new_as_of != as_of:
        return new_as_of > as_of
    return _LIFECYCLE.get(new_status, 0) >= _LIFECYCLE.get(status, 0)


async def apply_snapshot(
    session: AsyncSession, snapshot: Snapshot, as_of: int, now: datetime
) -> uuid.UUID | None:
    """The user whose subscription (and so perhaps tier) this was; None if nobody's."""
    user_id = snapshot.user_id or await _user_of_customer(session, snapshot.customer_id)
    if user_id is None or await _lock_user(session, user_id) is None:
        log.warning("subscription %s belongs to no known user; ignored", snapshot.subscription_id)
        return None
    await _insert_placeholder(session, snapshot, user_id, now)
    row = (
        await session.execute(
            select(Subscription)
            .where(Subscription.stripe_subscription_id == snapshot.subscription_id)
            .with_for_update()
        )
    ).scalar_one()
    if supersedes(snapshot.status, as_of, row.status, row.state_as_of):
        row.status = snapshot.status
        row.state_as_of = as_of
        row.stripe_customer_id = snapshot.customer_id or row.stripe_customer_id
        for name in ("current_period_start", "current_period_end", "cancel_at_period_end"):
            value = getattr(snapshot, name)
            if value is not None:
                setattr(row, name, value)
        row.updated_at = now
    if snapshot.customer_id:
        await link_customer(session, user_id, snapshot.customer_id)
    await session.flush()
    await refresh_tier(session, user_id)
    return user_id


async def extend_period(
    session: AsyncSession, subscription_id: str, period_end: datetime, now: datetime
) -> None:
    """A paid invoice: the period end only ever moves forward, whatever the order."""
    await session.execute(
        sa.update(Subscription)
        .where(
            Subscription.stripe_subscription_id == subscription_id,
            sa.or_(
                col(Subscription.current_period_end).is_(None),
                col(Subscription.current_period_end) < period_end,
            ),
        )
        .values(current_period_end=period_end, updated_at=now)
    )


async def link_customer(session: AsyncSession, user_id: uuid.UUID, customer_id: str) -> None:
    """Remember the user's Stripe customer (first one wins), so checkout reuses it."""
    await session.execute(
        sa.update(User)
        .where(col(User.id) == user_id, col(User.stripe_customer_id).is_(None))
        .values(stripe_customer_id=customer_id)
    )


async def refresh_tier(session: AsyncSession, user_id: uuid.UUID) -> None:
    has_pro = sa.exists().where(
        Subscription.user_id == user_id, col(Subscription.status).in_(PRO_STATUSES)
    )
    await session.execute(
        sa.update(User)
        .where(col(User.id) == user_id)
        .values(subscription_tier=sa.case((has_pro, Tier.PRO.value), else_=Tier.BASIC.value))
    )


async def status_of(session: AsyncSession, user: User) -> Status:
    """The subscription that decides the tier, or else the most recent one; 'none' if never."""
    rows = list(
        (
            await session.execute(
                select(Subscription)
                .where(Subscription.user_id == user.id)
                .order_by(col(Subscription.state_as_of).desc())
            )
        ).scalars()
    )
    current = next((row for row in rows if row.status in PRO_STATUSES), rows[0] if rows else None)
    if current is None:
        return Status(
            tier=user.tier, status="none", current_period_end=None, cancel_at_period_end=False
        )
    return Status(
        tier=user.tier,
        status=current.status,
        current_period_end=current.current_period_end,
        cancel_at_period_end=current.cancel_at_period_end,
    )


async def _insert_placeholder(
    session: AsyncSession, snapshot: Snapshot, user_id: uuid.UUID, now: datetime
) -> None:
    """Make sure the row exists (racing events for a new subscription insert it once)."""
    values = {
        "id": new_id(),
        "user_id": user_id,
        "stripe_subscription_id": snapshot.subscription_id,
        "stripe_customer_id": snapshot.customer_id,
        "status": _PLACEHOLDER,
        "state_as_of": -1,
        "cancel_at_period_end": False,
        "created_at": now,
        "updated_at": now,
    }
    insert = insert_for(session)
    await session.execute(
        insert(Subscription)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["stripe_subscription_id"])
    )


async def _user_of_customer(session: AsyncSession, customer_id: str | None) -> uuid.UUID | None:
    if not customer_id:
        return None
    return await session.scalar(select(User.id).where(User.stripe_customer_id == customer_id))


async def _lock_user(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    """Serialise billing changes per user: the tier is computed from all their subscriptions."""
    return await session.scalar(select(User.id).where(col(User.id) == user_id).with_for_update())


def id_of(value: Any) -> str | None:
    """Stripe fields hold an id, or the expanded object with one."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _max(values: Any) -> int | None:
    present = [int(value) for value in values if value]
    return max(present) if present else None
