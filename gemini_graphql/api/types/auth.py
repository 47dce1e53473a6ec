"""Inputs and payloads of the authentication mutations."""

from __future__ import annotations

from datetime import datetime

import strawberry

from gemini_graphql.api.context import Context
from gemini_graphql.api.errors import UserError
from gemini_graphql.api.types.user import UserType
from gemini_graphql.auth.service import Login, SentCode
from gemini_graphql.models import OtpPurpose as DomainOtpPurpose

OtpPurpose = strawberry.enum(
    DomainOtpPurpose, name="OtpPurpose", description="What a one-time code may be used for."
)


@strawberry.input
class SignupInput:
    mobile_number: str = strawberry.field(
        description="International format: + and country code (spaces and dashes are ignored)."
    )
    name: str | None = None
    email: str | None = None
    password: str | None = strawberry.field(
        default=None,
        description="Optional, 8 to 128 characters; usable after the first code login.",
    )


@strawberry.input
class SendOtpInput:
    mobile_number: str
    purpose: OtpPurpose | None = DomainOtpPurpose.LOGIN  # type: ignore[valid-type]


@strawberry.input
class VerifyOtpInput:
    mobile_number: str
    code: str


@strawberry.input
class LoginWithPasswordInput:
    mobile_number: str
    password: str


@strawberry.input
class ForgotPasswordInput:
    mobile_number: str


@strawberry.input
class ResetPasswordInput:
    mobile_number: str
    code: str
    new_password: str


@strawberry.input
class ChangePasswordInput:
    current_password: str | None = strawberry.field(
        default=None, description="Required when the account has a password."
    )
    new_password: str


@strawberry.type
class SignupPayload:
    user: UserType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class SendOtpPayload:
    sent: bool = strawberry.field(
        default=False, description="True also when the number has no account (no enumeration)."
    )
    expires_at: datetime | None = None
    dev_code: str | None = strawberry.field(
        default=None, description="The code itself, only when the server runs in dev mode."
    )
    errors: list[UserError] = strawberry.field(default_factory=list)

    @classmethod
    def of(cls, sent: SentCode) -> SendOtpPayload:
        return cls(sent=True, expires_at=sent.expires_at, dev_code=sent.dev_code)


@strawberry.type
class AuthPayload:
    access_token: str | None = None
    token_type: str | None = strawberry.field(default=None, description='"Bearer".')
    expires_in: int | None = strawberry.field(default=None, description="Seconds.")
    user: UserType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)

    @classmethod
    def of(cls, login: Login, context: Context) -> AuthPayload:
        return cls(
            access_token=login.access.token,
            token_type="Bearer",
            expires_in=login.access.expires_in,
            user=UserType.of(login.user, context),
        )


@strawberry.type
class ChangePasswordPayload:
    ok: bool = False
    access_token: str | None = strawberry.field(
        default=None, description="A fresh token: every older one stopped working."
    )
    errors: list[UserError] = strawberry.field(default_factory=list)
