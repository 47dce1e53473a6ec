"""Slow clients are dropped: real sockets against a real uvicorn, run as production runs it.

The timeouts are shortened to 1 s here; every hold time below is measured from the socket's
first moment (or the end of the previous response) to the server closing it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.web.server import MAX_HEAD_BYTES, HeadWithBody
from tests.conftest import FakeClock, RecordingSms
from tests.live import serve

TIMEOUT = 1.0  # both the header and the body timeout, in these tests
LATE = TIMEOUT + 1.5  # a connection held longer than this was not dropped in time
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return replace(
        base_settings, http_header_timeout_seconds=TIMEOUT, http_body_timeout_seconds=TIMEOUT
    )


@pytest.fixture
async def url(settings: Settings, clock: FakeClock, sms: RecordingSms) -> AsyncIterator[str]:
    async with serve(create_app(settings, clock=clock, sms=sms), settings) as base:
        yield base


async def open_connection(url: str) -> Stream:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port
    return await asyncio.open_connection(parts.hostname, parts.port)


async def until_closed(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection; fails after `within`."""
    chunks = []
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.2) -> None:
    """Send `data` one byte at a time, until it is all sent or the server hangs up."""
    for index in range(len(data)):
        try:
            writer.write(data[index : index + 1])
            await writer.drain()
        except OSError:
            return
        await asyncio.sleep(every)


async def held(url: str, first: bytes = b"", slowly: bytes = b"") -> tuple[float, bytes]:
    """Send `first` at once and then `slowly` byte by byte: how long the server kept the
    connection open, and what it answered."""
    started = time.monotonic()
    reader, writer = await open_connection(url)
    writer.write(first)
    sender = asyncio.create_task(trickle(writer, slowly))
    try:
        answer = await until_closed(reader)
        return time.monotonic() - started, answer
    finally:
        sender.cancel()
        writer.close()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """One request and its response (which has a Content-Length) on an open connection."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# The head of a request whose last header never ends.
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def graphql_post(body: bytes, length: int | None = None) -> bytes:
    return (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length)
    )


QUERY = json.dumps({"query": "{ __typename }"}).encode()


async def test_a_silent_connection_is_closed_after_the_header_timeout(url: str) -> None:
    seconds, answer = await held(url)
    assert TIMEOUT - 0.1 < seconds < LATE
    assert answer == b""  # nothing was asked: nothing to answer


async def test_trickled_headers_are_answered_408_and_closed(url: str) -> None:
    seconds, answer = await held(url, SLOW_HEAD, b"a" * 50)  # 10 s worth of bytes
    assert TIMEOUT - 0.1 < seconds < LATE
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close\r\n" in answer and b"x-content-type-options: nosniff" in answer
    assert answer.endswith(b"Request headers not received in time.")


async def test_a_trickled_body_is_answered_408_and_closed(url: str) -> None:
    seconds, answer = await held(url, graphql_post(QUERY, length=200), QUERY + b" " * 200)
    assert TIMEOUT - 0.1 < seconds < LATE
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close\r\n" in answer
    assert answer.endswith(b"Request body not received in time (limit 1 seconds).")


async def test_a_body_announced_but_never_sent_is_answered_408(url: str) -> None:
    seconds, answer = await held(url, graphql_post(b"", length=100))
    assert TIMEOUT - 0.1 < seconds < LATE
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_normal_requests_and_keep_alive_still_work(url: str) -> None:
    reader, writer = await open_connection(url)
    try:
        first = await exchange(reader, writer, HEALTH)
        assert first.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in first
        # The same connection, a little later but within the timeout: a second request.
        await asyncio.sleep(TIMEOUT / 2)
        second = await exchange(reader, writer, graphql_post(QUERY) + QUERY)
        assert second.startswith(b"HTTP/1.1 200 ") and b'"__typename":"Query"' in second
        # A head and a body in pieces, each within its timeout.
        writer.write(HEALTH[:10])
        await asyncio.sleep(TIMEOUT / 3)
        third = await exchange(reader, writer, HEALTH[10:])
        assert third.startswith(b"HTTP/1.1 200 ")
        writer.write(graphql_post(QUERY) + QUERY[:5])
        await asyncio.sleep(TIMEOUT / 3)
        fourth = await exchange(reader, writer, QUERY[5:])
        assert fourth.startswith(b"HTTP/1.1 200 ") and b'"__typename":"Query"' in fourth
    finally:
        writer.close()


async def test_the_header_timeout_restarts_for_each_request_on_a_connection(url: str) -> None:
    # uvicorn's keep-alive timer stops at the next request's first byte: without a deadline
    # of its own a second request's head could trickle in forever.
    started = time.monotonic()
    reader, writer = await open_connection(url)
    sender = None
    try:
        await asyncio.sleep(TIMEOUT * 0.7)  # most of the first deadline: it must not carry over
        assert (await exchange(reader, writer, HEALTH)).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        sender = asyncio.create_task(trickle(writer, SLOW_HEAD + b"a" * 50))
        answer = await until_closed(reader)
        assert TIMEOUT - 0.1 < time.monotonic() - answered < LATE
        assert time.monotonic() - started > TIMEOUT * 1.6
        assert answer.startswith(b"HTTP/1.1 408 ")
    finally:
        if sender:
            sender.cancel()
        writer.close()


async def test_an_oversized_head_is_refused(url: str) -> None:
    reader, writer = await open_connection(url)
    answer = b""
    try:
        writer.write(SLOW_HEAD)
        for _ in range(MAX_HEAD_BYTES // 8192 + 4):  # a header line longer than the cap
            try:  # stop sending once answered, or the unread rest resets the connection
                answer = await asyncio.wait_for(reader.read(65536), 0.02)
                break
            except TimeoutError:
                writer.write(b"a" * 8192)
        answer += await until_closed(reader, within=TIMEOUT / 2)  # well before the timeout
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert answer.endswith(b"Request head too large (limit 65536 bytes).")
    finally:
        writer.close()


async def test_many_slow_connections_are_all_dropped_while_others_are_served(url: str) -> None:
    kinds = [
        (b"", b""),  # connects and says nothing
        (SLOW_HEAD, b"a" * 50),  # a header byte every 0.2 s
        (graphql_post(QUERY, length=500), QUERY + b" " * 500),  # a body byte every 0.2 s
    ]
    slow = [asyncio.create_task(held(url, *kinds[index % 3])) for index in range(210)]
    await asyncio.sleep(TIMEOUT / 2)  # all of them connected and holding on
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        started = time.monotonic()
        response = await http.get("/health")
        served_in = time.monotonic() - started
    assert response.status_code == 200 and served_in < TIMEOUT / 2
    assert not any(task.done() for task in slow)
    results = await asyncio.wait_for(asyncio.gather(*slow), 15)
    longest = max(seconds for seconds, _ in results)
    assert longest < LATE, f"a slow connection was held {longest:.2f} s"
    answers = [answer[:13] for _, answer in results]
    assert answers.count(b"") == 70 and answers.count(b"HTTP/1.1 408 ") == 140


# What the protocol does not cut short: long requests and websockets.


async def _slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(TIMEOUT * 1.5)
    return PlainTextResponse("done")


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    for _ in range(10):
        await websocket.send_text(await websocket.receive_text())


async def test_responses_and_websockets_outlast_the_header_timeout(settings: Settings) -> None:
    app = Starlette(routes=[Route("/slow", _slow), WebSocketRoute("/echo", _echo)])
    async with serve(app, settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            response = await http.get("/slow")
            assert response.status_code == 200 and response.text == "done"
        ws_url = base.replace("http://", "ws://") + "/echo"
        async with websockets.connect(ws_url) as socket:
            await asyncio.sleep(TIMEOUT * 1.5)
            await socket.send("still here")
            assert await asyncio.wait_for(socket.recv(), 5) == "still here"


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_a_response_head_leaves_with_its_body_or_alone_at_the_turns_end() -> None:
    """HeadWithBody: a head and the body written in the same turn are one write; a head
    whose body is late goes alone when the turn ends; close sends what waits first; the
    rest of the transport is the transport's."""
    loop = asyncio.get_running_loop()
    transport = _RecordingTransport()
    corked = HeadWithBody(transport, loop)  # type: ignore[arg-type]
    corked.write(b"HEAD ")
    corked.write(b"body")
    corked.write(b" more")
    assert transport.writes == [b"HEAD body", b" more"]
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD body", b" more"]  # nothing written twice

    transport = _RecordingTransport()
    late = HeadWithBody(transport, loop)  # type: ignore[arg-type]
    late.write(b"HEAD")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD"]
    late.write(b"body")
    assert transport.writes == [b"HEAD", b"body"]

    transport = _RecordingTransport()
    closing = HeadWithBody(transport, loop)  # type: ignore[arg-type]
    closing.write(b"HEAD")
    closing.close()
    assert transport.writes == [b"HEAD"] and transport.closed
    assert closing.get_extra_info("peername") == "extra peername"
