"""How uvicorn runs the app: one set of options for `serve`, `dev` and the tests, and an
HTTP protocol that drops clients too slow (or too long-winded) with a request's head."""

from __future__ import annotations

import asyncio
import functools
import http
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gemini_graphql.config import Settings
from gemini_graphql.web.security_headers import API_CSP, STATIC_HEADERS

# uvicorn's default: an idle keep-alive connection is closed after this many seconds.
KEEP_ALIVE_SECONDS = 5
# httptools buffers a request line or header of any length: a head over this is refused.
MAX_HEAD_BYTES = 64 * 1024


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head.

    uvicorn stops its keep-alive timer at a request's first byte, then waits for the rest
    of the head for as long as the client likes: one header byte every few seconds holds a
    connection forever. Here a timer runs from the moment a connection opens, and again
    from the moment a response is complete, until the next head is complete; when it fires
    the connection is closed, with a 408 if a request had begun. Bodies are timed by
    BodySizeLimitMiddleware, where the answer gets the app's headers.

    Every override calls uvicorn's method and only adds to it.
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's first byte came, its head is not complete
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        super().data_received(data)
        # Only chunks wholly inside one head count: one that starts it may end a body.
        if in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"Request head too large (limit {MAX_HEAD_BYTES} bytes).")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        next_head_in = bool(self.pipeline)  # a pipelined request, about to start
        super().on_response_complete()
        if not next_head_in and not self.transport.is_closing():
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request headers not received in time.")
        else:
            self.transport.close()  # nothing asked, nothing to answer

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close, or only close if a response is being written."""
        if self.cycle is None or self.cycle.response_complete:
            body = message.encode()
            headers = [
                *self.server_state.default_headers,
                *STATIC_HEADERS,
                (b"content-security-policy", API_CSP),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
            lines += [name + b": " + value for name, value in headers]
            self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword options every uvicorn that runs the app gets (`serve`, `dev`, tests)."""
    return {
        # A partial, not a class made on the fly: `serve --workers` pickles it.
        "http": functools.partial(
            SlowClientProtocol, header_timeout=settings.http_header_timeout_seconds
        ),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "ws_max_size": settings.max_body_bytes,  # the cap on HTTP bodies, for messages
        "ws_per_message_deflate": False,  # zlib state per socket outweighs an idle subscription
        "server_header": False,  # no version to look up vulnerabilities by
        "log_config": None,  # keep the app's logging (JSON in production)
        "access_log": False,  # RequestIdMiddleware logs each request with its id
    }
