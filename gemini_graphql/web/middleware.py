"""ASGI middleware: request ids with an access log line, caps on request bodies' size and
time, and direct ways in for long-lived websockets and the busiest endpoint."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemini_graphql.config import AccessLog

access_log = logging.getLogger("gemini_graphql.access")
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIds:
    """Unique ids without a random draw per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


# Under ACCESS_LOG=errors, a request that took this long is logged whatever its status.
SLOW_REQUEST_MS = 1000.0


class RequestIdMiddleware:
    """Gives each request an id (or keeps a sane `X-Request-ID`), returns it, and logs a line
    for it as ACCESS_LOG says (see config.AccessLog)."""

    def __init__(self, app: ASGIApp, access_log: AccessLog = AccessLog.ALL) -> None:
        self.app = app
        self._ids = RequestIds()
        self._log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _CLIENT_REQUEST_ID.fullmatch(offered) else self._ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        downstream = send  # a websocket: no response head to stamp, many frames to send
        if scope["type"] == "http":

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = [
                        *message["headers"],
                        (b"x-request-id", request_id.encode()),
                    ]
                await send(message)

            downstream = send_with_id
        try:
            await self.app(scope, receive, downstream)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            if self._wanted(scope, status, duration_ms):
                self._write(scope, status, duration_ms, request_id)

    def _wanted(self, scope: Scope, status: int, duration_ms: float) -> bool:
        if self._log is AccessLog.ALL:
            return True
        if self._log is AccessLog.OFF:
            return False
        return (
            scope["type"] == "websocket"
            or not 200 <= status < 400  # (0: no answer was sent)
            or duration_ms >= SLOW_REQUEST_MS
        )

    @staticmethod
    def _write(scope: Scope, status: int, duration_ms: float, request_id: str) -> None:
        access_log.info(
            "%s %s %s %.1fms",
            scope.get("method", "WS"),
            scope["path"],
            status or "-",
            duration_ms,
            extra={
                "request_id": request_id,
                "user_id": scope["state"].get("user_id"),
                "status": status or None,
                "duration_ms": duration_ms,
            },
        )


class BodySizeLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, by Content-Length or while streaming, and
    bodies not complete `timeout_seconds` after the request's head with 408: a client
    trickling a body would otherwise hold a request, and what it buffered, for as long as
    it likes (the head has its own deadline, in web.server)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        deadline = _BodyDeadline(self.timeout_seconds)
        received = 0
        body_done = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # what follows is waiting for a disconnect: no deadline
                return await receive()
            message = await deadline.wait(receive)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # the client went away
            if body_done:
                deadline.cancel()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(scope, receive, send)
        except _BodyTimedOut:
            if not response_started:
                await self._time_out(scope, receive, send)
        finally:
            deadline.cancel()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(
            f"Request body too large (limit {self.max_bytes} bytes).", status_code=413
        )
        await response(scope, receive, send)

    async def _time_out(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(
            f"Request body not received in time (limit {self.timeout_seconds:g} seconds).",
            status_code=408,
            headers={"connection": "close"},  # the rest of the body may still be coming
        )
        await response(scope, receive, send)


class _BodyDeadline:
    """The time a request's body may take, with one timer per request, started at the first
    read (asyncio.timeout around each read cost ~10 µs a request, a twentieth of `me`).
    When it fires while the app waits for the body, that wait ends with _BodyTimedOut."""

    __slots__ = ("_handle", "_seconds", "_task", "_waiting", "expired")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self.expired = False

    async def wait(self, receive: Receive) -> Message:
        if self.expired:
            raise _BodyTimedOut
        if self._handle is None:
            self._task = asyncio.current_task()
            self._handle = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        self._waiting = True
        try:
            return await receive()
        except asyncio.CancelledError:
            if self.expired and self._task is not None and self._task.uncancel() == 0:
                raise _BodyTimedOut from None
            raise
        finally:
            self._waiting = False

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _expire(self) -> None:
        self.expired = True
        if self._waiting and self._task is not None:
            self._task.cancel()


class _BodyTooLarge(Exception):
    pass


class _BodyTimedOut(Exception):
    pass


class Shortcut:
    """Hands one kind of request for `path` (websocket, or HTTP with one of `methods`) to
    `endpoint` at once, past whatever stands between.

    The GraphQL websocket's comes before the HTTP-only middleware: they and Starlette's
    router only pass a websocket through, but each keeps a frame alive for as long as the
    connection lives, a few KB per idle subscription, of which a process holds thousands.
    GraphQL over HTTP's comes last, past Starlette's exception middleware and router, which
    an endpoint that answers its own errors does not need: a few µs of every request.
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        endpoint: ASGIApp,
        kind: str = "websocket",
        methods: frozenset[str] = frozenset(),
        route: BaseRoute | None = None,
    ) -> None:
        """`methods`: for HTTP; any other method goes on to the router (405 there). `route`:
        the router's route for them, put in the scope as the router would (tracing names
        spans by it)."""
        self.app = app
        self.path = path
        self.endpoint = endpoint
        self.kind = kind
        self.methods = methods
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == self.kind
            and scope["path"] == self.path
            and (self.kind == "websocket" or scope["method"] in self.methods)
        ):
            if self.route is not None:
                scope["route"] = self.route
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
