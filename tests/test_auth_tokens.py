"""Access tokens: every way a token can be bad gets a top-level UNAUTHENTICATED."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from gemini_graphql.config import Settings
from tests.auth_flows import CHANGE_PASSWORD, ME, login
from tests.conftest import GraphQLClient, RecordingSms


def assert_unauthenticated(body: dict) -> None:
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["path"] == ["me"]


def forge(settings: Settings, **overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "ver": 0,
    }
    claims.update(overrides)
    key = str(claims.pop("_key", settings.secret_key))
    alg = str(claims.pop("_alg", "HS256"))
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg)


async def test_no_token(gql: GraphQLClient) -> None:
    assert_unauthenticated(await gql(ME))


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer ....", "x" * 5000],
)
async def test_garbage_authorization_headers(gql: GraphQLClient, header: str) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": ME}, headers={"Authorization": header}
    )
    assert response.status_code == 200
    assert_unauthenticated(response.json())


async def test_valid_token_of_existing_user(
    gql: GraphQLClient, sms: RecordingSms, base_settings: Settings
) -> None:
    user = await login(gql, sms)
    assert (await gql(ME, token=user.token))["data"]["me"]["id"] == user.user_id
    # The forge helper makes a valid token: it is the changes below that break it.
    assert (await gql(ME, token=forge(base_settings, sub=user.user_id)))["data"]["me"][
        "id"
    ] == user.user_id


@pytest.mark.parametrize(
    "change",
    [
        {"_key": "another-secret-key-of-at-least-32-bytes!!"},
        {"exp": int(time.time()) - 1},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"ver": 1},
        {"ver": "0"},
        {"sub": "not-a-uuid"},
        {"sub": None},
        {"exp": None},
        {"aud": None},
        {"ver": None},
        {"_alg": "HS512"},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
async def test_bad_tokens(
    gql: GraphQLClient, sms: RecordingSms, base_settings: Settings, change: dict
) -> None:
    user = await login(gql, sms)
    assert_unauthenticated(
        await gql(ME, token=forge(base_settings, **{"sub": user.user_id, **change}))
    )


async def test_alg_none_is_refused(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    header, payload, _ = user.token.split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = none_header.decode().rstrip("=") + "." + payload + "."
    assert_unauthenticated(await gql(ME, token=unsigned))


async def test_tampered_payload_is_refused(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    other = await login(gql, sms)
    header, _, signature = user.token.split(".")
    _, other_payload, _ = other.token.split(".")
    assert_unauthenticated(await gql(ME, token=f"{header}.{other_payload}.{signature}"))


async def test_token_of_deleted_user(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user = await login(gql, sms)
    await pg.execute("DELETE FROM users WHERE id = $1", uuid.UUID(user.user_id))
    assert_unauthenticated(await gql(ME, token=user.token))


async def test_token_of_deactivated_user(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user = await login(gql, sms)
    await pg.execute("UPDATE users SET is_active = false WHERE id = $1", uuid.UUID(user.user_id))
    assert_unauthenticated(await gql(ME, token=user.token))


async def test_expiry_follows_the_configured_lifetime(
    gql: GraphQLClient, sms: RecordingSms, clock
) -> None:
    user = await login(gql, sms)
    clock.advance(minutes=59)
    assert (await gql(ME, token=user.token))["data"]["me"]["id"] == user.user_id
    clock.advance(minutes=1)
    assert_unauthenticated(await gql(ME, token=user.token))


async def test_changing_the_password_revokes_older_tokens(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    second_session = await login(gql, sms, number=user.number)
    body = await gql(CHANGE_PASSWORD, {"input": {"newPassword": "correct horse"}}, token=user.token)
    payload = body["data"]["changePassword"]
    assert payload["ok"] is True and payload["errors"] == []
    assert_unauthenticated(await gql(ME, token=user.token))
    assert_unauthenticated(await gql(ME, token=second_session.token))
    assert (await gql(ME, token=payload["accessToken"]))["data"]["me"]["hasPassword"] is True
