"""Security headers on every HTTP response: what a browser may do with what we send.

Pure ASGI (BaseHTTPMiddleware costs a task and a queue per request). Websockets pass
through untouched: they have no response head to stamp.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Headers = list[tuple[bytes, bytes]]

# Sent on every response, the server's own refusals (web.server) included.
STATIC_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# JSON and text load nothing and are never framed.
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# The GraphiQL page runs an inline script and inline styles; its files are the app's own
# (api/transport/graphiql.py).
PAGE_CSP = b"frame-ancestors 'none'"
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
NO_STORE = (b"cache-control", b"no-store")
# Answers with tokens, user data or payment state: never kept by a browser or proxy.
NO_STORE_PATHS = frozenset({"/graphql", "/webhook/stripe"})
_OURS = frozenset(
    {name for name, _ in STATIC_HEADERS} | {b"content-security-policy", HSTS[0], b"server"}
)
_OURS_AND_NO_STORE = _OURS | {NO_STORE[0]}


class SecurityHeadersMiddleware:
    """Adds the headers above to each response (replacing any the app set), `no-store`
    on NO_STORE_PATHS, and HSTS when `force_https` (clients only ever come over HTTPS)."""

    def __init__(
        self, app: ASGIApp, *, force_https: bool, no_store_paths: Iterable[str] = NO_STORE_PATHS
    ) -> None:
        self.app = app
        self.force_https = force_https
        self.no_store_paths = frozenset(no_store_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope["path"] in self.no_store_paths
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = self.headers(message.get("headers", ()), no_store)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette's last-resort 500 is sent outside every middleware; send it here,
            # with the headers (and the request id), and let the error go on to be logged.
            if not started:
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send_with_headers(
                    {"type": "http.response.body", "body": b"Internal Server Error"}
                )
            raise

    def headers(self, given: Iterable[tuple[bytes, bytes]], no_store: bool) -> Headers:
        """`given` with our headers in place of any of the same names (one pass: this runs
        for every response)."""
        replaced = _OURS_AND_NO_STORE if no_store else _OURS
        kept: Headers = []
        html = False
        for name, value in given:
            lowered = name.lower()
            if lowered in replaced:
                continue
            if lowered == b"content-type" and value[:9].lower() == b"text/html":
                html = True
            kept.append((name, value))
        kept.extend(STATIC_HEADERS)
        kept.append((b"content-security-policy", PAGE_CSP if html else API_CSP))
        if no_store:
            kept.append(NO_STORE)
        if self.force_https:
            kept.append(HSTS)
        return kept
