from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.errors import payload_or_errors
from gemini_graphql.api.types.auth import (
    AuthPayload,
    ChangePasswordInput,
    ChangePasswordPayload,
    ForgotPasswordInput,
    LoginWithPasswordInput,
    ResetPasswordInput,
    SendOtpInput,
    SendOtpPayload,
    SignupInput,
    SignupPayload,
    VerifyOtpInput,
)
from gemini_graphql.api.types.user import UserType
from gemini_graphql.auth.service import AuthService
from gemini_graphql.models import OtpPurpose


async def _throttled(info: Info, subject: str) -> AuthService:
    """Every auth mutation counts against the client's IP and the number (or user) it names."""
    auth = info.context.services.auth
    await auth.throttle(info.context.client_ip, subject)
    return auth


@strawberry.type
class AuthMutations:
    @strawberry.mutation(description="Create an account; then log in with sendOtp + verifyOtp.")
    async def signup(self, info: Info, input: SignupInput) -> SignupPayload:
        auth = await _throttled(info, input.mobile_number)
        signup = auth.signup(input.mobile_number, input.name, input.email, input.password)
        return await payload_or_errors(
            SignupPayload, signup, lambda user: SignupPayload(user=UserType.of(user, info.context))
        )

    @strawberry.mutation(
        description="Send a one-time code by SMS; same answer for unknown numbers."
    )
    async def send_otp(self, info: Info, input: SendOtpInput) -> SendOtpPayload:
        auth = await _throttled(info, input.mobile_number)
        sent = auth.send_code(input.mobile_number, input.purpose or OtpPurpose.LOGIN)
        return await payload_or_errors(SendOtpPayload, sent, SendOtpPayload.of)

    @strawberry.mutation(description="Log in with a LOGIN code; returns an access token.")
    async def verify_otp(self, info: Info, input: VerifyOtpInput) -> AuthPayload:
        auth = await _throttled(info, input.mobile_number)
        login = auth.verify_code(input.mobile_number, input.code)
        return await payload_or_errors(
            AuthPayload, login, lambda done: AuthPayload.of(done, info.context)
        )

    @strawberry.mutation(description="Log in with the account's password (after one code login).")
    async def login_with_password(self, info: Info, input: LoginWithPasswordInput) -> AuthPayload:
        auth = await _throttled(info, input.mobile_number)
        login = auth.login_with_password(input.mobile_number, input.password)
        return await payload_or_errors(
            AuthPayload, login, lambda done: AuthPayload.of(done, info.context)
        )

    @strawberry.mutation(description="Send a PASSWORD_RESET code; same answer for unknown numbers.")
    async def forgot_password(self, info: Info, input: ForgotPasswordInput) -> SendOtpPayload:
        auth = await _throttled(info, input.mobile_number)
        sent = auth.send_code(input.mobile_number, OtpPurpose.PASSWORD_RESET)
        return await payload_or_errors(SendOtpPayload, sent, SendOtpPayload.of)

    @strawberry.mutation(description="Set a new password with a PASSWORD_RESET code; logs in.")
    async def reset_password(self, info: Info, input: ResetPasswordInput) -> AuthPayload:
        auth = await _throttled(info, input.mobile_number)
        login = auth.reset_password(input.mobile_number, input.code, input.new_password)
        return await payload_or_errors(
            AuthPayload, login, lambda done: AuthPayload.of(done, info.context)
        )

    @strawberry.mutation(description="Change the password; every older token stops working.")
    async def change_password(
        self, info: Info, input: ChangePasswordInput
    ) -> ChangePasswordPayload:
        user = await info.context.user()
        auth = await _throttled(info, str(user.id))
        login = auth.change_password(user, input.current_password, input.new_password)
        return await payload_or_errors(
            ChangePasswordPayload,
            login,
            lambda login: ChangePasswordPayload(ok=True, access_token=login.access.token),
        )
