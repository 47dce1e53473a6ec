"""Request throttling of the auth mutations, per client IP and per mobile number."""

from __future__ import annotations

import asyncio

from tests.auth_flows import LOGIN_PASSWORD, SEND_OTP
from tests.conftest import GraphQLClient, new_number


def rate_limited(body: dict) -> int | None:
    errors = body.get("errors") or []
    if errors and errors[0]["extensions"]["code"] == "RATE_LIMITED":
        return errors[0]["extensions"]["retryAfter"]
    return None


async def test_per_number_limit(make_client) -> None:
    gql = GraphQLClient(await make_client(auth_rate_per_number=3))
    number = new_number()
    variables = {"input": {"mobileNumber": number, "password": "whatever-pass"}}
    for _ in range(3):
        assert rate_limited(await gql(LOGIN_PASSWORD, variables)) is None
    body = await gql(LOGIN_PASSWORD, variables)
    retry_after = rate_limited(body)
    assert retry_after is not None and 1 <= retry_after <= 60
    assert body["data"] is None
    # The same number written differently is the same number.
    spaced = {"input": {"mobileNumber": number[:2] + " " + number[2:], "password": "x" * 8}}
    assert rate_limited(await gql(LOGIN_PASSWORD, spaced)) is not None
    # Another number is not affected.
    other = {"input": {"mobileNumber": new_number(), "password": "whatever-pass"}}
    assert rate_limited(await gql(LOGIN_PASSWORD, other)) is None


async def test_per_ip_limit_holds_in_parallel(make_client, pg) -> None:
    gql = GraphQLClient(await make_client(auth_rate_per_ip=5))
    bodies = await asyncio.gather(
        *(gql(SEND_OTP, {"input": {"mobileNumber": new_number()}}) for _ in range(12))
    )
    limited = [body for body in bodies if rate_limited(body) is not None]
    assert len(limited) == 7
    # A throttled request did nothing.
    assert await pg.fetchval("SELECT count(*) FROM otps") == 5
