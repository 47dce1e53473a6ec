"""The HTTP surface: /, /health, and /graphql following the GraphQL-over-HTTP spec."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from gemini_graphql.config import AppEnv
from tests.auth_flows import ME, SIGNUP
from tests.conftest import GraphQLClient, new_number

GRAPHQL_RESPONSE = "application/graphql-response+json"


async def test_root_describes_the_service(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "gemini-graphql" and body["version"]
    assert body["links"]["graphql"].endswith("/graphql")
    assert body["links"]["health"].endswith("/health")


async def test_health_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_health_names_redis_when_down(make_client) -> None:
    client = await make_client(redis_url="redis://127.0.0.1:1/0")
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"] == {"postgres": "ok", "redis": "unavailable"}


async def test_health_names_postgres_when_down(make_client) -> None:
    client = await make_client(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"] == {"postgres": "unavailable", "redis": "ok"}


async def test_request_ids(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await client.get("/health", headers={"X-Request-ID": "bad id; " * 20})
    assert len(generated.headers["x-request-id"]) == 32


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = json.dumps({"query": "{ __typename }", "variables": {"x": "a" * (1024 * 1024)}})
    response = await client.post(
        "/graphql", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():
        for _ in range(20):
            yield b"x" * 65536

    response = await client.post(
        "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_post_with_application_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_graphql_response_json_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)


async def test_accept_preference_order(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"Accept": f"application/json;q=0.9, {GRAPHQL_RESPONSE}"},
    )
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{ me { id ", "parse"),
        ("{ nope }", "validation"),
        ("query($n: Int!) { __typename }", "variables"),
    ],
)
async def test_request_errors_are_400_with_the_new_media_type(
    client: httpx.AsyncClient, document: str, reason: str
) -> None:
    response = await client.post(
        "/graphql", json={"query": document}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400, reason
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    legacy = await client.post(
        "/graphql", json={"query": document}, headers={"Accept": "application/json"}
    )
    assert legacy.status_code == 200
    assert legacy.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_field_errors_stay_200(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": ME}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 200
    assert response.json()["data"] is None


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"a string"',
        b'{"query": 42}',
        b'{"query": "  "}',
        b"{}",
        b'{"query": "{ __typename }", "variables": []}',
        b'{"query": "{ __typename }", "operationName": 5}',
        b"\xff\xfe not utf-8",
    ],
)
async def test_malformed_requests_are_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


async def test_bad_variables_over_get_are_400(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/graphql", params={"query": "{ __typename }", "variables": "{nope"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_subscriptions_over_http_are_refused_with_a_pointer_to_the_websocket(
    client: httpx.AsyncClient,
) -> None:
    document = 'subscription { messageStream(messageId: "x") { seq } }'
    response = await client.post(
        "/graphql", json={"query": document}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST" and "websocket" in error["message"]


async def test_batching_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}]
    )
    assert response.status_code == 400


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", content=b"query=1", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


async def test_unacceptable_accept_is_406(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Accept": "application/xml"}
    )
    assert response.status_code == 406


async def test_query_over_get(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_mutation_over_get_is_405(client: httpx.AsyncClient, pg) -> None:
    document = 'mutation { signup(input: {mobileNumber: "%s"}) { errors { code } } }' % new_number()
    response = await client.get("/graphql", params={"query": document})
    assert response.status_code == 405
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


async def test_missing_variable(gql: GraphQLClient) -> None:
    body = await gql(SIGNUP, {})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "data" not in body


async def test_wrongly_typed_variable(gql: GraphQLClient) -> None:
    body = await gql(SIGNUP, {"input": {"mobileNumber": 5550102030}})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    body = await gql(SIGNUP, {"input": {"mobileNumber": new_number(), "unknownField": 1}})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_depth_limit(gql: GraphQLClient) -> None:
    deep = "{ me " + "{ a " * 11 + "}" * 12
    body = await gql(deep)
    assert {error["extensions"]["code"] for error in body["errors"]} == {"BAD_REQUEST"}
    assert any("exceeds maximum operation depth" in error["message"] for error in body["errors"])


async def test_introspection_depth_limit(gql: GraphQLClient) -> None:
    deep = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    body = await gql(deep)
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_alias_limit(gql: GraphQLClient) -> None:
    aliases = " ".join(f"a{i}: __typename" for i in range(16))
    body = await gql("{ %s }" % aliases)
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_token_limit(gql: GraphQLClient) -> None:
    body = await gql("{ " + "__typename " * 2500 + "}")
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_graphiql_and_introspection_outside_production(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    body = (
        await client.post("/graphql", json={"query": "{ __schema { queryType { name } } }"})
    ).json()
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_no_graphiql_or_introspection_in_production(make_client) -> None:
    client = await make_client(
        app_env=AppEnv.PRODUCTION, sms_backend="webhook", sms_webhook_url="http://127.0.0.1:1/"
    )
    page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 404
    body = (
        await client.post("/graphql", json={"query": "{ __schema { queryType { name } } }"})
    ).json()
    assert "data" not in body or body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_unexpected_errors_are_masked_and_logged(
    make_client, caplog: pytest.LogCaptureFixture
) -> None:
    # A database that does not exist: every query fails deep inside the driver.
    client = await make_client(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/no_such_db"
    )
    caplog.set_level(logging.ERROR, logger="gemini_graphql.errors")
    response = await client.post(
        "/graphql", json={"query": SIGNUP, "variables": {"input": {"mobileNumber": new_number()}}}
    )
    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert error["message"] == "Internal server error."
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    request_id = error["extensions"]["requestId"]
    assert request_id == response.headers["x-request-id"]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)
