"""Sign-up input, passwords: logging in, changing, resetting."""

from __future__ import annotations

import pytest

from tests.auth_flows import (
    CHANGE_PASSWORD,
    FORGOT_PASSWORD,
    LOGIN_PASSWORD,
    ME,
    RESET_PASSWORD,
    SIGNUP,
    error_codes,
    login,
    signup,
)
from tests.conftest import GraphQLClient, RecordingSms, new_number


async def password_login(gql: GraphQLClient, number: str, password: str) -> dict:
    body = await gql(LOGIN_PASSWORD, {"input": {"mobileNumber": number, "password": password}})
    return body["data"]["loginWithPassword"]


async def test_signup_stores_a_normalised_profile(gql: GraphQLClient, pg) -> None:
    number = new_number()
    body = await gql(
        SIGNUP,
        {
            "input": {
                "mobileNumber": number,
                "name": "  Ada  ",
                "email": " Ada@Example.COM ",
                "password": "s3cret-pass",
            }
        },
    )
    user = body["data"]["signup"]["user"]
    assert user == {
        "id": user["id"],
        "mobileNumber": number,
        "name": "Ada",
        "email": "ada@example.com",
        "tier": "BASIC",
        "hasPassword": True,
    }
    stored = await pg.fetchval("SELECT password_hash FROM users WHERE mobile_number = $1", number)
    assert stored.startswith("$argon2id$") and "s3cret-pass" not in stored


async def test_signup_twice_is_taken(gql: GraphQLClient, pg) -> None:
    number = await signup(gql)
    body = await gql(SIGNUP, {"input": {"mobileNumber": number}})
    assert error_codes(body["data"]["signup"]) == [("MOBILE_NUMBER_TAKEN", "mobileNumber")]
    assert body["data"]["signup"]["user"] is None
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


async def test_parallel_signups_of_one_number_create_one_account(gql: GraphQLClient, pg) -> None:
    import asyncio

    number = new_number()
    bodies = await asyncio.gather(
        *(gql(SIGNUP, {"input": {"mobileNumber": number}}) for _ in range(5))
    )
    created = [b for b in bodies if b["data"]["signup"]["user"]]
    assert len(created) == 1
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mobileNumber": "12345"}, "mobileNumber"),
        ({"name": "x" * 101}, "name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "x" * 250 + "@example.com"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "p" * 129}, "password"),
    ],
)
async def test_signup_rejects_bad_fields_and_writes_nothing(
    gql: GraphQLClient, pg, fields: dict, field: str
) -> None:
    body = await gql(SIGNUP, {"input": {"mobileNumber": new_number(), **fields}})
    assert error_codes(body["data"]["signup"]) == [("INVALID_INPUT", field)]
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


async def test_password_login_after_code_login(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms, password="s3cret-pass")
    payload = await password_login(gql, user.number, "s3cret-pass")
    assert payload["errors"] == [] and payload["user"]["id"] == user.user_id
    assert (await gql(ME, token=payload["accessToken"]))["data"]["me"]["id"] == user.user_id


async def test_password_login_failures_look_alike(gql: GraphQLClient, sms: RecordingSms) -> None:
    with_password = await login(gql, sms, password="s3cret-pass")
    without_password = await login(gql, sms)
    unverified = await signup(gql, password="s3cret-pass")  # nobody has proved owning it
    attempts = [
        (with_password.number, "wrong-password"),
        (new_number(), "s3cret-pass"),
        (without_password.number, "s3cret-pass"),
        (unverified, "s3cret-pass"),
        ("not a number", "s3cret-pass"),
        (with_password.number, "p" * 10_000),
        (with_password.number, ""),
    ]
    answers = [await password_login(gql, number, password) for number, password in attempts]
    assert all(answer == answers[0] for answer in answers), answers
    assert error_codes(answers[0]) == [("INVALID_CREDENTIALS", "password")]
    assert answers[0]["accessToken"] is None


async def test_change_password_needs_the_current_one(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms, password="s3cret-pass")
    missing = await gql(
        CHANGE_PASSWORD, {"input": {"newPassword": "new-pass-123"}}, token=user.token
    )
    assert error_codes(missing["data"]["changePassword"]) == [("INVALID_INPUT", "currentPassword")]
    wrong = await gql(
        CHANGE_PASSWORD,
        {"input": {"currentPassword": "nope-nope", "newPassword": "new-pass-123"}},
        token=user.token,
    )
    assert error_codes(wrong["data"]["changePassword"]) == [
        ("INVALID_CREDENTIALS", "currentPassword")
    ]
    assert wrong["data"]["changePassword"]["ok"] is False
    # Nothing changed: the old token and the old password still work.
    assert (await gql(ME, token=user.token))["data"]["me"]["id"] == user.user_id
    assert (await password_login(gql, user.number, "s3cret-pass"))["errors"] == []

    ok = await gql(
        CHANGE_PASSWORD,
        {"input": {"currentPassword": "s3cret-pass", "newPassword": "new-pass-123"}},
        token=user.token,
    )
    assert ok["data"]["changePassword"]["ok"] is True
    assert error_codes(await password_login(gql, user.number, "s3cret-pass")) == [
        ("INVALID_CREDENTIALS", "password")
    ]
    assert (await password_login(gql, user.number, "new-pass-123"))["errors"] == []


@pytest.mark.parametrize("new_password", ["short", "p" * 129])
async def test_change_password_validates_the_new_one(
    gql: GraphQLClient, sms: RecordingSms, new_password: str
) -> None:
    user = await login(gql, sms)
    body = await gql(CHANGE_PASSWORD, {"input": {"newPassword": new_password}}, token=user.token)
    assert error_codes(body["data"]["changePassword"]) == [("INVALID_INPUT", "newPassword")]
    assert (await gql(ME, token=user.token))["data"]["me"]["hasPassword"] is False


async def test_change_password_needs_a_login(gql: GraphQLClient) -> None:
    body = await gql(CHANGE_PASSWORD, {"input": {"newPassword": "new-pass-123"}})
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_reset_password_flow(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms, password="old-password")
    body = await gql(FORGOT_PASSWORD, {"input": {"mobileNumber": user.number}})
    assert body["data"]["forgotPassword"]["sent"] is True
    code = sms.last_code(user.number)

    bad = await gql(
        RESET_PASSWORD,
        {"input": {"mobileNumber": user.number, "code": code, "newPassword": "short"}},
    )
    assert error_codes(bad["data"]["resetPassword"]) == [("INVALID_INPUT", "newPassword")]

    body = await gql(
        RESET_PASSWORD,
        {"input": {"mobileNumber": user.number, "code": code, "newPassword": "brand-new-pass"}},
    )
    payload = body["data"]["resetPassword"]
    assert payload["errors"] == [] and payload["user"]["hasPassword"] is True
    assert (await gql(ME, token=user.token))["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert (await gql(ME, token=payload["accessToken"]))["data"]["me"]["id"] == user.user_id
    assert (await password_login(gql, user.number, "brand-new-pass"))["errors"] == []
    again = await gql(
        RESET_PASSWORD,
        {"input": {"mobileNumber": user.number, "code": code, "newPassword": "another-pass"}},
    )
    assert error_codes(again["data"]["resetPassword"]) == [("OTP_INVALID", "code")]


async def test_login_code_cannot_reset_password(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    body = await gql(
        "mutation($n: String!) { sendOtp(input: {mobileNumber: $n}) { sent } }", {"n": user.number}
    )
    assert body["data"]["sendOtp"]["sent"]
    reset = await gql(
        RESET_PASSWORD,
        {
            "input": {
                "mobileNumber": user.number,
                "code": sms.last_code(user.number),
                "newPassword": "brand-new-pass",
            }
        },
    )
    assert error_codes(reset["data"]["resetPassword"]) == [("OTP_INVALID", "code")]


async def test_forgot_password_answers_alike_for_unknown_numbers(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    sent_before = len(sms.sent)
    known = (await gql(FORGOT_PASSWORD, {"input": {"mobileNumber": user.number}}))["data"][
        "forgotPassword"
    ]
    unknown = (await gql(FORGOT_PASSWORD, {"input": {"mobileNumber": new_number()}}))["data"][
        "forgotPassword"
    ]
    assert known.keys() == unknown.keys()
    assert (known["sent"], known["devCode"], known["errors"]) == (
        unknown["sent"],
        unknown["devCode"],
        unknown["errors"],
    )
    assert len(sms.sent) == sent_before + 1


async def test_reset_for_unknown_number_is_invalid(gql: GraphQLClient) -> None:
    number = new_number()
    await gql(FORGOT_PASSWORD, {"input": {"mobileNumber": number}})
    body = await gql(
        RESET_PASSWORD,
        {"input": {"mobileNumber": number, "code": "123456", "newPassword": "brand-new-pass"}},
    )
    assert error_codes(body["data"]["resetPassword"]) == [("OTP_INVALID", "code")]
