"""The daily message quota: a per-user counter for the current UTC day."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gemini_graphql.config import Settings
from gemini_graphql.models import Tier, User

_USERS = User.__table__  # type: ignore[attr-defined]
_TODAY = sa.bindparam("today", type_=sa.Date)
# Built once (it runs on every send): SQLAlchemy then works out its cache key once.
_CONSUME_ONE = (
    sa.update(_USERS)
    .where(
        _USERS.c.id == sa.bindparam("owner_id"),
        sa.or_(
            _USERS.c.last_message_date.is_distinct_from(_TODAY),
            _USERS.c.daily_message_count
            < sa.case(
                (
                    _USERS.c.subscription_tier == Tier.PRO.value,
                    sa.bindparam("pro_limit", type_=sa.Integer),
                ),
                else_=sa.bindparam("basic_limit", type_=sa.Integer),
            ),
        ),
    )
    .values(
        daily_message_count=sa.case(
            (_USERS.c.last_message_date == _TODAY, _USERS.c.daily_message_count + 1), else_=1
        ),
        last_message_date=_TODAY,
    )
    .returning(_USERS.c.daily_message_count, _USERS.c.subscription_tier)
)


@dataclass(frozen=True, slots=True)
class Usage:
    used: int
    limit: int
    remaining: int
    resets_at: datetime
    tokens_today: int = 0


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
    tokens = user.daily_token_count if user.last_token_date == utc_day(now) else 0
    return Usage(
        used=used,
        limit=limit,
        remaining=max(0, limit - used),
        resets_at=next_utc_midnight(now),
        tokens_today=tokens,
    )


def consuming(gate: sa.ColumnElement[bool]) -> sa.Update:
    """consume_one's UPDATE, counting only where `gate` holds too (with its parameters, see
    consume_parameters; it returns the count and the tier, see counted). For a statement
    that counts the message together with other steps: Messages.add_turn's, which counts it
    only in a room it found, and locked first."""
    return _CONSUME_ONE.where(gate)


def consume_parameters(user_id: uuid.UUID, settings: Settings, now: datetime) -> dict[str, object]:
    return {
        "owner_id": user_id,
        "today": utc_day(now),
        "pro_limit": settings.pro_daily_limit,
        "basic_limit": settings.basic_daily_limit,
    }


def counted(used: int, tier: str, settings: Settings, now: datetime) -> Usage:
    """The usage after a message was counted: the count and tier the UPDATE returned."""
    cap = daily_limit(settings, Tier(tier))
    return Usage(
        used=used, limit=cap, remaining=max(0, cap - used), resets_at=next_utc_midnight(now)
    )


async def consume_one(
    session: AsyncSession | AsyncConnection, user_id: uuid.UUID, settings: Settings, now: datetime
) -> Usage | None:
    """Count one message against today's quota, atomically; None when it is used up.

    One conditional UPDATE: concurrent sends serialise on the user's row and
    each re-checks the condition, so N parallel sends against a limit of 5
    accept exactly 5.
    """
    result = await session.execute(_CONSUME_ONE, consume_parameters(user_id, settings, now))
    row = result.first()
    if row is None:
        return None
    used, tier = row
    return counted(used, tier, settings, now)


_GIVEN_BACK_ON = sa.bindparam("given_back_on", type_=sa.Date)
_TOKENS = sa.bindparam("tokens", type_=sa.Integer)
_TOKEN_DAY = sa.bindparam("token_day", type_=sa.Date)
_GIVES_BACK = sa.and_(
    _USERS.c.last_message_date == _GIVEN_BACK_ON, _USERS.c.daily_message_count > 0
)
# A user's day settled, built once: a unit given back (to the day it was counted on: one from
# an earlier day has expired anyway) and a reply's tokens counted. Both in one UPDATE, so a
# reply's end can be one statement (PostgreSQL updates a row at most once per statement).
SETTLE = (
    sa.update(_USERS)
    .where(
        _USERS.c.id == sa.bindparam("owner_id", type_=sa.Uuid),
        sa.or_(_TOKENS > 0, _GIVES_BACK),  # else there is nothing to write
    )
    .values(
        daily_message_count=sa.case(
            (_GIVES_BACK, _USERS.c.daily_message_count - 1), else_=_USERS.c.daily_message_count
        ),
        daily_token_count=sa.case(
            (_TOKENS <= 0, _USERS.c.daily_token_count),
            (_USERS.c.last_token_date == _TOKEN_DAY, _USERS.c.daily_token_count + _TOKENS),
            else_=_TOKENS,
        ),
        last_token_date=sa.case((_TOKENS <= 0, _USERS.c.last_token_date), else_=_TOKEN_DAY),
    )
)


def settle_parameters(
    user_id: uuid.UUID, *, give_back_on: date | None, tokens: int, day: date
) -> dict[str, object]:
    """SETTLE's parameters: a unit given back to `give_back_on` (None: none), `tokens`
    counted on `day`."""
    return {"owner_id": user_id, "given_back_on": give_back_on, "tokens": tokens, "token_day": day}


async def give_back_one(
    connection: AsyncSession | AsyncConnection, user_id: uuid.UUID, day: date
) -> None:
    """Return a unit counted on `day`; a unit from an earlier day has expired anyway."""
    parameters = settle_parameters(user_id, give_back_on=day, tokens=0, day=day)
    await connection.execute(SETTLE, parameters)


async def add_tokens(
    connection: AsyncSession | AsyncConnection, user_id: uuid.UUID, tokens: int, day: date
) -> None:
    """Count a finished reply's tokens in the user's day (Usage.tokensToday)."""
    parameters = settle_parameters(user_id, give_back_on=None, tokens=tokens, day=day)
    await connection.execute(SETTLE, parameters)
