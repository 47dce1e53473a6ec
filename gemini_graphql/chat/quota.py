"""The daily message quota: a per-user counter for the current UTC day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gemini_graphql.config import Settings
from gemini_graphql.models import Tier, User


@dataclass(frozen=True, slots=True)
class Usage:
    used: int
    limit: int
    remaining: int
    resets_at: datetime


def daily_limit(settings: Settings, tier: Tier) -> int:
    return settings.pro_daily_limit if tier is Tier.PRO else settings.basic_daily_limit


def next_utc_midnight(now: datetime) -> datetime:
    return datetime.combine(utc_day(now) + timedelta(days=1), time.min, tzinfo=UTC)


def utc_day(now: datetime) -> date:
    return now.astimezone(UTC).date()


def usage_of(user: User, settings: Settings, now: datetime) -> Usage:
    """What the user has used today; yesterday's count reads as zero."""
    used = user.daily_message_count if user.last_message_date == utc_day(now) else 0
    limit = daily_limit(settings, user.tier)
    return Usage(used=used, limit=limit, remaining=max(0, limit - used), resets_at=next_utc_midnight(now))
