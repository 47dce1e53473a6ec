"""Hostile documents and payloads: every one is refused with a clear error, quickly, and
leaves the connection usable (a real uvicorn server, so keep-alive is real)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets

from gemini_graphql.api.schema import build_schema
from gemini_graphql.api.transport.documents import BUDGET, MAX_CHARS, Documents
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from gemini_graphql.config import Settings
from tests.chat_harness import PROTOCOL, closed_with
from tests.conftest import GraphQLClient, RecordingSms
from tests.test_websocket_protocol import acknowledged, receive, send


def fragment_chain(levels: int, leaf: str = "__typename") -> str:
    """`{ ...F0 }` where each fragment spreads the next one twice: 2**levels leaves."""
    parts = ["{ ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    parts.append(f"fragment F{levels} on Query {{ {leaf} }}")
    return " ".join(parts)


HOSTILE_DOCUMENTS: dict[str, str] = {
    **{f"fragment chain of {n}": fragment_chain(n) for n in (10, 20, 40, 60)},
    "fragment chain of 40 with empty leaves": fragment_chain(40, ""),
    "unknown fragment": "{ ...F0 }",
    "fragment cycle": "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
    "fragment spreading itself": "{ ...A } fragment A on Query { __typename ...A }",
    "unused fragment": "{ __typename } fragment A on Query { __typename }",
    "10,000 aliases": "{" + " ".join(f"a{i}: __typename" for i in range(10_000)) + "}",
    "1,000-deep selection": "{" + "me {" * 1000 + "}" * 1001,
    "100 copies of one field": "{" + " me { id usage { used } }" * 100 + "}",
    "repeats through fragments": "{ ...A ...A ...A ...A } fragment A on Query { me { id } me { id } me { id } }",
    "11 levels deep": "{ me " + "{ a " * 11 + "}" * 12,
    "16 aliases through a fragment": "{ ...A } fragment A on Query { "
    + " ".join(f"a{i}: __typename" for i in range(16))
    + " }",
    "a huge comment": "#" + "x" * (MAX_CHARS + 1) + "\n{ __typename }",
}


@pytest.fixture
def http_url(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://", 1).removesuffix("/graphql")


async def test_hostile_documents_are_bad_requests_on_a_connection_that_stays_usable(
    http_url: str,
) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=http_url, limits=limits, timeout=10) as http:
        for name, document in HOSTILE_DOCUMENTS.items():
            response = await http.post(
                "/graphql",
                json={"query": document},
                headers={"Accept": "application/graphql-response+json"},
            )
            assert response.status_code == 400, (name, response.text[:300])
            body = response.json()
            assert "data" not in body, name
            assert body["errors"] and all(
                error["extensions"]["code"] == "BAD_REQUEST" for error in body["errors"]
            ), (name, body)
            assert response.headers.get("connection") != "close", name
            # The next request on the same pooled connection is answered normally.
            follow_up = await http.post("/graphql", json={"query": "{ __typename }"})
            assert follow_up.json() == {"data": {"__typename": "Query"}}, name


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '{"query": "{ __typename }", "variables": {"a": %s}}' % nested_json(1000),
            "nests too deeply",
        ),
        (
            '{"query": "{ __typename }", "variables": {"a": %s}}' % nested_json(100_000),
            "nests too deeply",
        ),
        (
            '{"query": "{ __typename }", "variables": {"a": %s}}' % nested_json(40),
            "nests deeper than 32",
        ),
        (nested_json(5000), "nests too deeply"),
        ('{"query": "{ __typename }"', "not valid JSON"),
        ('{"query": "{ __typename }", "variables": "x"}', "must be a JSON object"),
        ("\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_json_is_a_400_that_keeps_the_connection(
    http_url: str, body: str, expected: str
) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        response = await http.post(
            "/graphql",
            content=body.encode("utf-8", "surrogateescape"),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text[:300]
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_REQUEST" and expected in error["message"]
        assert response.headers.get("connection") != "close"
        follow_up = await http.post("/graphql", json={"query": "{ __typename }"})
        assert follow_up.status_code == 200


async def test_deep_variables_over_get_are_a_400(http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        params = {
            "query": "{ __typename }",
            "variables": json.dumps({"a": 0})[:-1] + ', "b": ' + nested_json(2000) + "}",
        }
        response = await http.get("/graphql", params=params)
        assert response.status_code == 400
        assert "nests too deeply" in response.json()["errors"][0]["message"]


def test_the_budget_refuses_before_any_rule_expands_fragments() -> None:
    """The refusal comes from the linear walk (its own message), not from a rule that
    expanded 2**40 spreads; `bench` measures its CPU time."""
    documents = Documents(graphql_schema(build_schema()), introspection=True)
    for levels in (10, 40, 60):
        prepared = documents.prepare(fragment_chain(levels))
        assert prepared.document is None
        assert prepared.errors[0]["message"] == "'__typename' is selected more than 10 times."
    empty = documents.prepare(fragment_chain(40, ""))
    assert f"more than {BUDGET.max_nodes} fields and fragments" in empty.errors[0]["message"]


def test_a_large_legitimate_document_passes_the_budget() -> None:
    """GraphiQL's own introspection query (fragments nested eight deep) is well within it."""
    from graphql import get_introspection_query

    documents = Documents(graphql_schema(build_schema()), introspection=True)
    query = get_introspection_query(
        descriptions=True, specified_by_url=True, input_value_deprecation=True
    )
    assert documents.prepare(query).errors == ()


async def test_suggestions_are_hidden_in_production(make_client: Any) -> None:
    production = await make_client(app_env=_production())
    body = (await production.post("/graphql", json={"query": "{ mee { id } }"})).json()
    assert body["errors"][0]["message"] == "Cannot query field 'mee' on type 'Query'."
    body = (await production.post("/graphql", json={"query": "{ me { tierr } }"})).json()
    assert "Did you mean" not in body["errors"][0]["message"]
    enum = 'mutation { sendOtp(input: {mobileNumber: "+14155550123", purpose: LOGINN}) { sent } }'
    body = (await production.post("/graphql", json={"query": enum})).json()
    assert "Did you mean" not in json.dumps(body)
    variables = {
        "query": 'mutation($p: OtpPurpose!) { sendOtp(input: {mobileNumber: "+14155550123", purpose: $p}) { sent } }',
        "variables": {"p": "LOGINN"},
    }
    body = (await production.post("/graphql", json=variables)).json()
    assert body["errors"] and "Did you mean" not in json.dumps(body)
    # Outside production the suggestions help developers.
    dev = await make_client()
    body = (await dev.post("/graphql", json={"query": "{ mee { id } }"})).json()
    assert "Did you mean 'me'?" in body["errors"][0]["message"]


def _production() -> Any:
    from gemini_graphql.config import AppEnv

    return AppEnv.PRODUCTION


async def test_hostile_documents_over_a_websocket_are_errors_not_crashes(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    socket = await acknowledged(ws_url, gql, sms)
    for index, document in enumerate(HOSTILE_DOCUMENTS.values()):
        await send(socket, {"id": str(index), "type": "subscribe", "payload": {"query": document}})
        message = await receive(socket)
        assert message["type"] == "error" and message["id"] == str(index), message
        assert all(error["extensions"]["code"] == "BAD_REQUEST" for error in message["payload"])
    await send(socket, {"id": "ok", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    assert (await receive(socket))["payload"] == {"data": {"__typename": "Query"}}
    await socket.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (nested_json(100_000), 4400),
        (
            '{"type": "subscribe", "id": "1", "payload": {"query": "{ __typename }", "variables": {"a": %s}}}'
            % nested_json(500),
            4400,
        ),
        (b'{"type": "ping"}', 4400),  # binary frames are not the protocol's
        ('{"type": "ping", "padding": "%s"}' % ("x" * (1024 * 1024 + 1)), 1009),
    ],
)
async def test_bad_frames_close_the_socket_with_a_code(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms, frame: str | bytes, code: int
) -> None:
    socket = await acknowledged(ws_url, gql, sms)
    await socket.send(frame)
    assert await closed_with(socket) == code


async def test_operations_per_connection_are_capped(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    from tests.auth_flows import login
    from tests.chat_harness import create_room
    from tests.chat_harness import send as send_message

    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    reply = (await send_message(gql, user.token, room))["reply"]["id"]
    socket = await websockets.connect(ws_url, subprotocols=[PROTOCOL])
    await send(
        socket, {"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}
    )
    assert (await receive(socket))["type"] == "connection_ack"
    # No worker runs here: subscriptions to the PENDING reply stay open. Fill the connection.
    stream = 'subscription { messageStream(messageId: "%s") { seq } }' % reply
    for index in range(Settings().max_operations_per_connection):  # the default, 100
        await send(socket, {"id": str(index), "type": "subscribe", "payload": {"query": stream}})
    await asyncio.sleep(0.5)
    await send(socket, {"id": "extra", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    async with asyncio.timeout(10):
        while True:
            message = await receive(socket)
            if message.get("id") == "extra":
                break
    assert message["type"] == "error"
    assert "at most 100" in message["payload"][0]["message"]
    await socket.close()


async def test_a_client_that_does_not_read_is_disconnected(
    ws_url: str, gql: GraphQLClient, sms: RecordingSms
) -> None:
    """Large answers to a client that stopped reading: the server's buffer fills, messages
    pile up, and past MAX_WAITING_SENDS the server ends the connection instead of holding
    them all."""
    from graphql import get_introspection_query

    from gemini_graphql.api.transport.websocket import MAX_WAITING_SENDS

    socket = await acknowledged(ws_url, gql, sms)
    await socket.close()
    user_socket = await _non_reading_socket(ws_url, gql, sms)
    query = get_introspection_query(descriptions=True)
    sent = 0
    try:
        async with asyncio.timeout(30):
            while sent < 2000:
                await user_socket.send(
                    json.dumps({"id": str(sent), "type": "subscribe", "payload": {"query": query}})
                )
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0.05)
    except websockets.ConnectionClosed:
        pass
    # Now read what the server had sent before it let go: far fewer answers than questions.
    received = 0
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await user_socket.recv())
                received += message["type"] == "next"
    assert received < sent - MAX_WAITING_SENDS, (received, sent)


async def _non_reading_socket(
    url: str, gql: GraphQLClient, sms: RecordingSms
) -> websockets.ClientConnection:
    """A socket whose client keeps at most one message and a small kernel buffer: once
    they are full it reads nothing more until asked."""
    import socket as sockets
    from urllib.parse import urlparse

    from tests.auth_flows import login

    user = await login(gql, sms)
    parsed = urlparse(url)
    raw = sockets.socket()
    raw.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (parsed.hostname, parsed.port))
    socket = await websockets.connect(
        url, sock=raw, subprotocols=[PROTOCOL], max_queue=1, ping_interval=None
    )
    await socket.send(
        json.dumps(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}
        )
    )
    assert json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "connection_ack"
    return socket


NUL_INPUTS = [
    (
        'mutation { createChatroom(input: {title: "a\\u0000b"}) { errors { code field } } }',
        "createChatroom",
        "title",
    ),
    (
        'mutation { createChatroom(input: {title: "ok", description: "\\u0000"}) { errors { code field } } }',
        "createChatroom",
        "description",
    ),
    (
        'mutation { signup(input: {mobileNumber: "+14155550199", name: "\\u0000"}) { errors { code field } } }',
        "signup",
        "name",
    ),
    (
        'mutation { signup(input: {mobileNumber: "+14155550199", email: "a\\u0000@b.co"}) { errors { code field } } }',
        "signup",
        "email",
    ),
]


@pytest.mark.parametrize(("document", "mutation", "field"), NUL_INPUTS)
async def test_nul_characters_are_invalid_input_not_a_failed_write(
    gql: GraphQLClient, sms: RecordingSms, pg, document: str, mutation: str, field: str
) -> None:
    """PostgreSQL's text cannot hold NUL (found by the schemathesis run)."""
    from tests.auth_flows import login

    user = await login(gql, sms)
    body = await gql(document, token=user.token)
    assert body["data"][mutation]["errors"] == [{"code": "INVALID_INPUT", "field": field}], body
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0


async def test_nul_in_a_message_is_invalid_input(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    from tests.auth_flows import login
    from tests.chat_harness import create_room
    from tests.chat_harness import send as send_message

    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    payload = await send_message(gql, user.token, room, "hi\x00there")
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID_INPUT", "content")]
    assert await pg.fetchval("SELECT count(*) FROM messages") == 0


async def test_lone_surrogates_are_a_bad_request(http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        for body in (
            '{"query": "{ __typename }", "variables": {"a": "\\ud800"}}',
            '{"query": "{ me\\udfff }"}',
            '{"query": "mutation($p: String!) { loginWithPassword(input: {mobileNumber: \\"+14155550123\\", password: $p}) { errors { code } } }", "variables": {"p": "x\\ud800y"}}',
        ):
            response = await http.post(
                "/graphql", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, response.text
            assert "not valid Unicode" in response.json()["errors"][0]["message"]


async def test_an_unreachable_database_is_service_unavailable_not_a_500(
    base_settings: Any, sms: RecordingSms, clock: Any
) -> None:
    """Over HTTP a top-level SERVICE_UNAVAILABLE with retryAfter (and Retry-After); a
    websocket's connection_init is closed with 1013 (try again later)."""
    from dataclasses import replace

    from gemini_graphql.app.http_app import create_app
    from gemini_graphql.auth.tokens import TokenCodec
    from gemini_graphql.testing.processes import free_port
    from tests.live import serve

    settings = replace(
        base_settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"
    )
    token = TokenCodec(settings, clock).issue(uuid.uuid4(), 0).token
    async with serve(create_app(settings, clock=clock, sms=sms)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            response = await http.post(
                "/graphql",
                json={"query": "{ me { id } }"},
                headers={"Authorization": f"Bearer {token}"},
            )
            [error] = response.json()["errors"]
            assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE", error
            assert error["extensions"]["retryAfter"] > 0 and response.headers["retry-after"]
            signup = (
                'mutation { signup(input: {mobileNumber: "+14155550123"}) { errors { code } } }'
            )
            body = (await http.post("/graphql", json={"query": signup})).json()
            assert body["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE", body
        socket = await websockets.connect(
            url.replace("http://", "ws://") + "/graphql", subprotocols=[PROTOCOL]
        )
        await send(
            socket, {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        )
        assert await closed_with(socket) == 1013
