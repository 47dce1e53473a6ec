"""Security headers on every HTTP response, errors included; HSTS only with FORCE_HTTPS;
no `server` header over a real socket; websockets untouched."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.web.middleware import Shortcut
from gemini_graphql.web.security_headers import SecurityHeadersMiddleware
from tests.conftest import FakeClock, RecordingSms
from tests.live import serve

EVERYWHERE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
BIG = json.dumps({"query": "{ __typename }", "variables": {"x": "a" * (1024 * 1024)}})

# (what, method, path, request options, expected status): every route, and errors.
REQUESTS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("root", "GET", "/", {}, 200),
    ("health", "GET", "/health", {}, 200),
    ("graphql POST", "POST", "/graphql", {"json": {"query": "{ __typename }"}}, 200),
    ("graphql GET", "GET", "/graphql", {"params": {"query": "{ __typename }"}}, 200),
    ("graphiql", "GET", "/graphql", {"headers": {"Accept": "text/html"}}, 200),
    (
        "graphql 400",
        "POST",
        "/graphql",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("graphql 415", "POST", "/graphql", {"content": b"x"}, 415),
    ("stripe webhook", "POST", "/webhook/stripe", {"content": b"{}"}, 503),  # not configured
    ("404", "GET", "/no-such-page", {}, 404),
    ("405", "GET", "/webhook/stripe", {}, 405),
    (
        "413",
        "POST",
        "/graphql",
        {"content": BIG, "headers": {"Content-Type": "application/json"}},
        413,
    ),
    (
        "CORS preflight refused",
        "OPTIONS",
        "/graphql",
        {"headers": {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}},
        400,
    ),
]


def expected(path: str, html: bool, force_https: bool) -> dict[str, str | None]:
    return {
        **EVERYWHERE,
        "content-security-policy": "frame-ancestors 'none'" if html else API_CSP,
        "cache-control": "no-store" if path in ("/graphql", "/webhook/stripe") else None,
        "strict-transport-security": HSTS if force_https else None,
        "server": None,
    }


def check(response: httpx.Response, path: str, force_https: bool) -> None:
    html = response.headers.get("content-type", "").startswith("text/html")
    got = {name: response.headers.get(name) for name in expected(path, html, force_https)}
    assert got == expected(path, html, force_https)


@pytest.mark.parametrize("force_https", [False, True], ids=["http", "FORCE_HTTPS"])
@pytest.mark.parametrize(
    "what, method, path, options, status", REQUESTS, ids=[request[0] for request in REQUESTS]
)
async def test_every_response_carries_the_headers(
    make_client: Any,
    force_https: bool,
    what: str,
    method: str,
    path: str,
    options: dict[str, Any],
    status: int,
) -> None:
    client = await make_client(force_https=force_https)
    response = await client.request(method, path, **options)
    assert response.status_code == status, response.text
    check(response, path, force_https)
    if what == "graphiql":
        assert "graphiql" in response.text.lower()  # the page itself, with its own CSP


async def test_an_unhandled_error_is_a_500_with_the_headers() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = Starlette(
        routes=[Route("/boom", boom)],
        middleware=[Middleware(SecurityHeadersMiddleware, force_https=True)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/boom")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    check(response, "/boom", force_https=True)


async def test_app_set_values_are_replaced_not_doubled() -> None:
    async def page(request: Request) -> Response:
        headers = {"X-Frame-Options": "ALLOWALL", "Server": "nginx", "Cache-Control": "max-age=60"}
        return Response("<p>hi</p>", media_type="text/html", headers=headers)

    app = Starlette(
        routes=[Route("/graphql", page)],
        middleware=[Middleware(SecurityHeadersMiddleware, force_https=False)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/graphql")
    check(response, "/graphql", force_https=False)
    assert response.headers.get_list("x-frame-options") == ["DENY"]
    assert response.headers.get_list("cache-control") == ["no-store"]


async def test_websockets_pass_through_untouched() -> None:
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(receive=receive, send=send)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    middleware = SecurityHeadersMiddleware(inner, force_https=True)
    await middleware({"type": "websocket", "path": "/other"}, receive, send)
    assert seen == {"receive": receive, "send": send}
    # And the GraphQL websocket never reaches it: its Shortcut comes first.
    order = [entry.cls for entry in create_app(Settings()).user_middleware]
    assert order.index(Shortcut) < order.index(SecurityHeadersMiddleware)


async def test_over_a_real_socket_there_is_no_server_header(
    base_settings: Settings, clock: FakeClock, sms: RecordingSms
) -> None:
    app = create_app(base_settings, clock=clock, sms=sms)
    async with (
        serve(app, base_settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        for path in ("/health", "/no-such-page"):
            response = await http.get(path)
            assert "server" not in response.headers and "date" in response.headers
            check(response, path, force_https=False)
        response = await http.post("/graphql", json={"query": "{ __typename }"})
        check(response, "/graphql", force_https=False)
