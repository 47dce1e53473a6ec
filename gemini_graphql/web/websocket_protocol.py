"""The websocket protocol uvicorn runs for us: its sans-I/O one, made lean per connection.

A process holds thousands of idle subscriptions, each one connection, and writes each
event of a stream to every subscriber's socket: what uvicorn keeps per connection and does
per message is paid thousands of times over.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

# An ASGI extension (scope["extensions"]) for apps that write many small messages: a
# synchronous send, for a message that can go at once. The GraphQL transport's subscriptions
# write their events through it (api/transport/websocket.py names it too).
SEND_NOWAIT = "gemini_graphql.websocket.send_nowait"


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, with less held per connection and text
    messages framed here.

    - uvicorn keeps the handshake's request and response (their headers parsed into
      websockets' Headers) for as long as the connection lives, and reads neither after
      the response is sent: they are let go of, and the request's headers emptied.
    - Its receive queue and writable flag were an asyncio.Queue and an asyncio.Event,
      4.1 KB of every idle subscription (three deques and an Event of their own, a deque
      of waiters): `_Inbox` and `_Writable` do what uvicorn asks of them in a few hundred
      bytes.
    - Each event of a stream is one text frame per subscriber: websockets' send_text and
      data_to_send took 1.0 µs a frame, `text_frame` 0.2; and SEND_NOWAIT writes one
      without a coroutine.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][SEND_NOWAIT] = self.send_nowait

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the extension refers back to this protocol: let go
            scope["extensions"].pop(SEND_NOWAIT, None)

    def send_nowait(self, text: bytes) -> bool:
        """The SEND_NOWAIT extension: one text message (UTF-8) written now, or False when
        it has to wait (the socket's buffer is full) or go through `send` (closing)."""
        if self.writable.is_set() and not self.disconnected and self._frames_plain():
            self.transport.write(text_frame(text))
            return True
        return False

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and (text := message.get("text")) is not None:
            await self.writable.wait()  # uvicorn's flow control, as its own send
            if self.send_nowait(text.encode()):
                return
        await super().send(message)  # everything else, and its errors, as uvicorn does
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # websockets' parser keeps the request in a local variable for as long as the
            # connection lives: its headers are emptied (the scope has its own copy).
            self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]

    def _frames_plain(self) -> bool:
        """A text message may be framed here, not by websockets: the connection is open,
        no close was sent, and nothing (an extension, a fragmented message) changes how."""
        conn = self.conn
        return (
            self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and conn.state is State.OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
        )


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 §5.2): what websockets' Frame gives a
    server for it."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


class _Inbox:
    """uvicorn's receive queue: what it calls of asyncio.Queue (put_nowait, get, empty),
    for the one reader an ASGI connection has (the app's `receive`)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []  # a message or two at a time: a list, not a deque
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Writable:
    """uvicorn's writable flag (set, clear, wait, is_set), which any number of sends may
    wait on while the socket's buffer drains."""

    __slots__ = ("_drained", "_set")

    def __init__(self) -> None:
        self._set = True
        self._drained: asyncio.Future[None] | None = None  # while cleared and waited on

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        # Shielded: one waiter's cancellation must not cancel the others' wait.
        await asyncio.shield(self._drained)
