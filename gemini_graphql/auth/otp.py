"""One-time codes: issued per number and purpose, checked with a bounded number of tries.

Only an HMAC of the code is stored. Every try is counted by an atomic UPDATE
before the code is compared, so parallel guesses cannot get more tries than
`MAX_ATTEMPTS` between them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, func, select

from gemini_graphql.clock import Clock
from gemini_graphql.errors import DomainError, ErrorCode, invalid_input
from gemini_graphql.models import Otp, OtpPurpose

CODE_DIGITS = 6
TTL = timedelta(minutes=10)
MAX_ATTEMPTS = 5
MAX_CODES_PER_WINDOW = 5
SEND_WINDOW = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class IssuedOtp:
    code: str
    expires_at: datetime


class OtpBook:
    def __init__(self, secret_key: str, clock: Clock) -> None:
        self._key = hashlib.sha256(b"otp:" + secret_key.encode()).digest()
        self._clock = clock

    def _hash(self, mobile_number: str, purpose: OtpPurpose, code: str) -> str:
        message = f"{purpose.value}:{mobile_number}:{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    async def issue(
        self, session: AsyncSession, mobile_number: str, purpose: OtpPurpose
    ) -> IssuedOtp:
        """Store a new code; OTP_THROTTLED past the hourly allowance. Caller commits."""
        await _lock_number(session, mobile_number)
        now = self._clock()
        recent = await session.scalar(
            select(func.count())
            .select_from(Otp)
            .where(Otp.mobile_number == mobile_number, Otp.created_at > now - SEND_WINDOW)
        )
        if (recent or 0) >= MAX_CODES_PER_WINDOW:
            raise DomainError(
                ErrorCode.OTP_THROTTLED,
                "Too many codes were requested for this number. Try again in an hour.",
                "mobileNumber",
            )
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        expires_at = now + TTL
        session.add(
            Otp(
                mobile_number=mobile_number,
                code_hash=self._hash(mobile_number, purpose, code),
                purpose=purpose.value,
                expires_at=expires_at,
                created_at=now,
            )
        )
        return IssuedOtp(code=code, expires_at=expires_at)

    async def consume(
        self, session: AsyncSession, mobile_number: str, purpose: OtpPurpose, code: str
    ) -> None:
        """Accept the newest live code for the number and purpose, once.

        The try is counted and committed on its own; the code is marked used in
        the caller's transaction, so it stays usable if the caller's work fails.
        """
        if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
            raise invalid_input("code", f"The code has {CODE_DIGITS} digits.")
        now = self._clock()
        newest = (
            select(Otp.id)
            .where(Otp.mobile_number == mobile_number, Otp.purpose == purpose.value)
            .order_by(col(Otp.created_at).desc())
            .limit(1)
            .scalar_subquery()
        )
        claimed = (
            await session.execute(
                sa.update(Otp)
                .where(
                    col(Otp.id) == newest,
                    col(Otp.used_at).is_(None),
                    Otp.expires_at > now,
                    Otp.attempts < MAX_ATTEMPTS,
                )
                .values(attempts=Otp.attempts + 1)
                .returning(Otp.id, Otp.code_hash, Otp.attempts)
            )
        ).first()
        await session.commit()
        if claimed is None:
            raise await self._why_refused(session, newest, now)
        otp_id, code_hash, attempts = claimed
        if not hmac.compare_digest(code_hash, self._hash(mobile_number, purpose, code)):
            if attempts >= MAX_ATTEMPTS:
                raise _attempts_exceeded()
            raise invalid_code()
        used = await session.execute(
            sa.update(Otp)
            .where(col(Otp.id) == otp_id, col(Otp.used_at).is_(None))
            .values(used_at=now)
            .returning(Otp.id)
        )
        if used.first() is None:  # a parallel request used it first
            raise invalid_code()

    async def _why_refused(
        self, session: AsyncSession, newest: sa.ScalarSelect[uuid.UUID], now: datetime
    ) -> DomainError:
        otp = (await session.execute(select(Otp).where(col(Otp.id) == newest))).scalar_one_or_none()
        if otp and otp.used_at is None and otp.expires_at > now and otp.attempts >= MAX_ATTEMPTS:
            return _attempts_exceeded()
        return invalid_code()


async def _lock_number(session: AsyncSession, mobile_number: str) -> None:
    """Serialise code issuing per number, so parallel requests cannot pass the hourly cap."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"otp:{mobile_number}"},
        )


def invalid_code() -> DomainError:
    return DomainError(ErrorCode.OTP_INVALID, "The code is wrong, expired or already used.", "code")


def _attempts_exceeded() -> DomainError:
    return DomainError(
        ErrorCode.OTP_ATTEMPTS_EXCEEDED,
        "Too many wrong codes. Request a new code.",
        "code",
    )
