"""The authentication use cases: sign up, codes, logins, passwords, and who a token belongs to."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gemini_graphql.auth.otp import IssuedOtp, OtpBook, invalid_code
from gemini_graphql.auth.passwords import hash_password, validate_new_password, verify_password
from gemini_graphql.auth.phone import normalize_mobile_number
from gemini_graphql.auth.sms import SmsSender
from gemini_graphql.auth.throttle import RateLimiter
from gemini_graphql.auth.tokens import AccessToken, TokenCodec
from gemini_graphql.clock import Clock
from gemini_graphql.config import Settings
from gemini_graphql.errors import DomainError, ErrorCode, Unauthenticated, invalid_input
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.models import OtpPurpose, User, loaded
from gemini_graphql.text import check_storable

log = logging.getLogger(__name__)

NAME_MAX = 100
EMAIL_MAX = 254
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
THROTTLE_WINDOW_SECONDS = 60
_USER_BY_ID = sa.select(User.__table__).where(User.__table__.c.id == sa.bindparam("user_id"))


@dataclass(frozen=True, slots=True)
class SentCode:
    expires_at: datetime
    dev_code: str | None  # only in APP_ENV=dev


@dataclass(frozen=True, slots=True)
class Login:
    user: User
    access: AccessToken


class AuthService:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        redis: Redis,
        users: UserCache,
        sms: SmsSender,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._sessions = database.sessions
        self._autocommit = database.autocommit
        self._sms = sms
        self._clock = clock
        self._users = users
        self._otps = OtpBook(settings.secret_key, clock)
        self._limiter = RateLimiter(redis, settings.redis_names.key("throttle"))
        self.tokens = TokenCodec(settings, clock)

    async def throttle(self, client_ip: str, subject: str | None) -> None:
        """Count an auth request per client IP and per subject (a number or a user id)."""
        settings = self._settings
        window = THROTTLE_WINDOW_SECONDS
        await self._limiter.hit(
            "auth-ip", client_ip, limit=settings.auth_rate_per_ip, window=window
        )
        if subject:
            try:
                subject = normalize_mobile_number(subject)
            except DomainError:
                subject = subject.strip()[:64]
            limit = settings.auth_rate_per_number
            await self._limiter.hit("auth-subject", subject, limit=limit, window=window)

    async def signup(
        self,
        mobile_number: str,
        name: str | None = None,
        email: str | None = None,
        password: str | None = None,
    ) -> User:
        number = normalize_mobile_number(mobile_number)
        name = _clean_name(name)
        email = _clean_email(email)
        if password is not None:
            validate_new_password(password, "password")
        now = self._clock()
        user = User(
            mobile_number=number,
            name=name,
            email=email,
            password_hash=await hash_password(password) if password is not None else None,
            created_at=now,
            updated_at=now,
        )
        async with self._sessions() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise DomainError(
                    ErrorCode.MOBILE_NUMBER_TAKEN,
                    "An account with this mobile number already exists. Log in instead.",
                    "mobileNumber",
                ) from None
        return user

    async def send_code(self, mobile_number: str, purpose: OtpPurpose) -> SentCode:
        """Issue a code. Answers alike whether or not the number has an account.

        A code is stored for unknown numbers too (so throttling looks the same),
        but an SMS goes only to numbers with an account.
        """
        number = normalize_mobile_number(mobile_number)
        async with self._sessions() as session:
            issued = await self._otps.issue(session, number, purpose)
            has_account = await _user_by_number(session, number) is not None
            await session.commit()
        if has_account:
            await self._deliver(number, purpose, issued)
        return SentCode(
            expires_at=issued.expires_at,
            dev_code=issued.code if self._settings.is_dev else None,
        )

    async def verify_code(self, mobile_number: str, code: str) -> Login:
        """Log in with a LOGIN code. Accounts are created by `signup`, never here."""
        number = normalize_mobile_number(mobile_number)
        async with self._sessions() as session:
            user = await self._consume_code(session, number, OtpPurpose.LOGIN, code)
            first_login = user.mobile_verified_at is None
            if first_login:
                user.mobile_verified_at = self._clock()
            await session.commit()
        if first_login:
            await self._users.changed(user.id)
        return Login(user=user, access=self.tokens.issue(user.id, user.token_version))

    async def login_with_password(self, mobile_number: str, password: str) -> Login:
        """INVALID_CREDENTIALS alike for a wrong password, an unknown number or no password."""
        try:
            number = normalize_mobile_number(mobile_number)
        except DomainError:
            number = None
        user = None
        if number is not None:
            async with self._sessions() as session:
                user = await _user_by_number(session, number)
        usable = user is not None and user.is_active and user.mobile_verified_at is not None
        password_hash = user.password_hash if usable and user is not None else None
        if not await verify_password(password_hash, password) or user is None:
            raise DomainError(
                ErrorCode.INVALID_CREDENTIALS, "Wrong mobile number or password.", "password"
            )
        return Login(user=user, access=self.tokens.issue(user.id, user.token_version))

    async def reset_password(self, mobile_number: str, code: str, new_password: str) -> Login:
        number = normalize_mobile_number(mobile_number)
        validate_new_password(new_password, "newPassword")
        async with self._sessions() as session:
            user = await self._consume_code(session, number, OtpPurpose.PASSWORD_RESET, code)
            password_hash = await hash_password(new_password)
            user = await self._set_password(session, user.id, password_hash, verified=True)
            await session.commit()
        await self._users.changed(user.id)
        return Login(user=user, access=self.tokens.issue(user.id, user.token_version))

    async def change_password(
        self, user: User, current_password: str | None, new_password: str
    ) -> Login:
        """Needs the current password when one is set; every older token stops working."""
        validate_new_password(new_password, "newPassword")
        if user.password_hash is not None:
            if current_password is None:
                raise invalid_input("currentPassword", "Enter your current password.")
            if not await verify_password(user.password_hash, current_password):
                raise DomainError(
                    ErrorCode.INVALID_CREDENTIALS,
                    "The current password is wrong.",
                    "currentPassword",
                )
        password_hash = await hash_password(new_password)
        async with self._sessions() as session:
            updated = await self._set_password(session, user.id, password_hash, verified=False)
            await session.commit()
        await self._users.changed(updated.id)
        return Login(user=updated, access=self.tokens.issue(updated.id, updated.token_version))

    async def _consume_code(
        self, session: AsyncSession, number: str, purpose: OtpPurpose, code: str
    ) -> User:
        """Use the code; the active account of the number, or OTP_INVALID like a wrong code."""
        await self._otps.consume(session, number, purpose, code)
        user = await _user_by_number(session, number)
        if user is None or not user.is_active:
            raise invalid_code()
        return user

    async def _set_password(
        self, session: AsyncSession, user_id: uuid.UUID, password_hash: str, *, verified: bool
    ) -> User:
        now = self._clock()
        values: dict[str, object] = {
            "password_hash": password_hash,
            "token_version": User.token_version + 1,
            "updated_at": now,
        }
        if verified:  # a reset code proves the number is the user's
            values["mobile_verified_at"] = sa.func.coalesce(User.mobile_verified_at, now)
        result = await session.execute(
            sa.update(User)
            .where(col(User.id) == user_id)
            .values(**values)
            .returning(User)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return result.scalar_one()

    async def authenticate(self, token: str | None) -> User:
        """The active user a token belongs to; Unauthenticated otherwise."""
        if not token:
            raise Unauthenticated()
        claims = self.tokens.decode(token)
        user = await self._user_by_id(claims.user_id)
        if user is None or not user.is_active or user.token_version != claims.version:
            raise Unauthenticated(
                "The access token is no longer valid; log in again.", "token revoked"
            )
        return user

    async def _user_by_id(self, user_id: uuid.UUID) -> User | None:
        """The hot path (every authenticated request): the process's copy, else one SELECT."""
        user = self._users.user(user_id)
        if user is not None:
            return user
        ticket = self._users.ticket()
        async with self._autocommit.connect() as connection:
            row = (await connection.execute(_USER_BY_ID, {"user_id": user_id})).mappings().first()
        if row is None:
            return None
        user = loaded(User, row)
        self._users.keep_user(user, ticket)
        return user

    async def _deliver(self, number: str, purpose: OtpPurpose, issued: IssuedOtp) -> None:
        action = "log in" if purpose is OtpPurpose.LOGIN else "reset your password"
        text = f"Your gemini-graphql code to {action} is {issued.code}. It expires in 10 minutes."
        try:
            await self._sms.send(number, text)
        except Exception:  # the answer must not reveal whether an SMS went out
            log.exception("SMS delivery failed")


async def _user_by_number(session: AsyncSession, number: str) -> User | None:
    result = await session.execute(select(User).where(User.mobile_number == number))
    return result.scalar_one_or_none()


def _clean_name(name: str | None) -> str | None:
    if name is None or not name.strip():
        return None
    name = name.strip()
    if len(name) > NAME_MAX:
        raise invalid_input("name", f"The name must have at most {NAME_MAX} characters.")
    check_storable("name", name)
    return name


def _clean_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    email = email.strip()
    if len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email):
        raise invalid_input("email", "Enter a valid email address, like name@example.com.")
    check_storable("email", email)
    return email.lower()
