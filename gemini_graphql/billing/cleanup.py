"""Scheduled clean-up of processed Stripe event ids (daily, see app.worker)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from gemini_graphql.infra.db import Database, delete_in_batches
from gemini_graphql.models import StripeEvent

# An event id is kept to recognise redeliveries: Stripe retries a webhook for up to 3 days,
# so after 30 no redelivery can come.
STRIPE_EVENT_KEEP = timedelta(days=30)

_EVENTS = StripeEvent.__table__  # type: ignore[attr-defined]


async def delete_old_stripe_events(database: Database, now: datetime) -> int:
    """Delete the event ids received more than STRIPE_EVENT_KEEP ago; how many."""
    doomed = sa.select(_EVENTS.c.id).where(_EVENTS.c.received_at < now - STRIPE_EVENT_KEEP)
    return await delete_in_batches(database, _EVENTS, doomed)
