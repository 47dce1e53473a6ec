"""Scheduled clean-up of one-time codes: rows past any use are deleted (hourly, see
app.worker)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from gemini_graphql.infra.db import Database, delete_in_batches
from gemini_graphql.models import Otp

# Well past a code's life (otp.TTL) and the hourly throttle that counts codes per number
# (otp.SEND_WINDOW): a row this old answers nothing any more.
OTP_KEEP = timedelta(days=1)

_OTPS = Otp.__table__  # type: ignore[attr-defined]


async def delete_old_otps(database: Database, now: datetime) -> int:
    """Delete the codes created more than OTP_KEEP ago that are used or expired; how many."""
    cutoff = now - OTP_KEEP
    doomed = sa.select(_OTPS.c.id).where(
        _OTPS.c.created_at < cutoff,
        sa.or_(_OTPS.c.expires_at < now, _OTPS.c.used_at.is_not(None)),
    )
    return await delete_in_batches(database, _OTPS, doomed)
