"""GraphQL documents and small flows the auth tests share."""

from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import GraphQLClient, RecordingSms, new_number

SIGNUP = """
mutation($input: SignupInput!) {
  signup(input: $input) { user { id mobileNumber name email tier hasPassword } errors { code field message } }
}"""
SEND_OTP = """
mutation($input: SendOtpInput!) {
  sendOtp(input: $input) { sent expiresAt devCode errors { code field message } }
}"""
VERIFY_OTP = """
mutation($input: VerifyOtpInput!) {
  verifyOtp(input: $input) {
    accessToken tokenType expiresIn user { id mobileNumber } errors { code field message }
  }
}"""
LOGIN_PASSWORD = """
mutation($input: LoginWithPasswordInput!) {
  loginWithPassword(input: $input) { accessToken user { id } errors { code field message } }
}"""
FORGOT_PASSWORD = """
mutation($input: ForgotPasswordInput!) {
  forgotPassword(input: $input) { sent expiresAt devCode errors { code field message } }
}"""
RESET_PASSWORD = """
mutation($input: ResetPasswordInput!) {
  resetPassword(input: $input) { accessToken user { id hasPassword } errors { code field message } }
}"""
CHANGE_PASSWORD = """
mutation($input: ChangePasswordInput!) {
  changePassword(input: $input) { ok accessToken errors { code field message } }
}"""
ME = "{ me { id mobileNumber name tier hasPassword usage { used limit remaining resetsAt } createdAt } }"


@dataclass
class LoggedIn:
    number: str
    user_id: str
    token: str


async def signup(gql: GraphQLClient, number: str | None = None, **fields: str) -> str:
    number = number or new_number()
    body = await gql(SIGNUP, {"input": {"mobileNumber": number, **fields}})
    assert body["data"]["signup"]["errors"] == [], body
    return number


async def send_code(gql: GraphQLClient, number: str, purpose: str = "LOGIN") -> dict:
    body = await gql(SEND_OTP, {"input": {"mobileNumber": number, "purpose": purpose}})
    return body["data"]["sendOtp"]


async def login(
    gql: GraphQLClient, sms: RecordingSms, number: str | None = None, **fields: str
) -> LoggedIn:
    """Sign up (when `number` is None) and log in with a code, as a user would."""
    if number is None:
        number = await signup(gql, **fields)
    sent = await send_code(gql, number)
    assert sent["sent"] and sent["errors"] == [], sent
    body = await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": sms.last_code(number)}})
    payload = body["data"]["verifyOtp"]
    assert payload["errors"] == [], payload
    return LoggedIn(number=number, user_id=payload["user"]["id"], token=payload["accessToken"])


def error_codes(payload: dict) -> list[tuple[str, str | None]]:
    return [(error["code"], error["field"]) for error in payload["errors"]]
