"""A websocket load process for bench/streams.py: holds subscriptions, times deltas.

Commands arrive as JSON lines on stdin; each gets one JSON line back on stdout.
A delta's text is the publisher's monotonic clock reading (same machine, same clock).

It speaks just enough of the websocket protocol (RFC 6455: the upgrade, masked client
frames, unmasked server frames, ping/pong, close) to read thousands of streams cheaply: it
shares the machine's CPUs with the api it measures, and a full client library spent half as
much CPU per delta as the api itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from urllib.parse import urlparse

import uvloop

STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq delta } }"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


class Subscription(asyncio.Protocol):
    """One websocket holding one messageStream subscription."""

    def __init__(self, latencies: list[float], recording: list[bool]) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.acknowledged: asyncio.Future[None] = loop.create_future()
        self._latencies = latencies
        self._recording = recording  # one shared flag
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send_json(self, message: dict) -> None:
        assert self._transport is not None
        self._transport.write(frame(TEXT, json.dumps(message).encode()))

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame(CLOSE, (1000).to_bytes(2, "big")))
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(bytes(buffer[:end]).decode()))
                return
            del buffer[: end + 4]
            self.upgraded.set_result(None)
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            if opcode == TEXT:
                self._message(payload)
            elif opcode == PING:
                assert self._transport is not None
                self._transport.write(frame(PONG, payload))
            elif opcode == CLOSE:
                self.close()

    def _message(self, payload: bytes) -> None:
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "next":
            if self._recording[0]:
                sent = float(message["payload"]["data"]["messageStream"]["delta"])
                self._latencies.append((time.monotonic() - sent) * 1000)
        elif kind == "connection_ack":
            self.acknowledged.set_result(None)


async def main(url: str, token: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    target = urlparse(url)
    upgrade = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
    subscriptions: list[Subscription] = []
    latencies: list[float] = []
    recording = [False]

    async def open_one(reply_id: str) -> None:
        _, subscription = await loop.create_connection(
            lambda: Subscription(latencies, recording), target.hostname, target.port
        )
        key = base64.b64encode(os.urandom(16)).decode()
        subscription._transport.write(upgrade.replace("{key}", key).encode())  # type: ignore[union-attr]
        async with asyncio.timeout(120):
            await subscription.upgraded
            subscription.send_json(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            )
            await subscription.acknowledged
        subscription.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": STREAM, "variables": {"id": reply_id}},
            }
        )
        subscriptions.append(subscription)

    while True:
        command = json.loads(await reader.readline())
        op = command["op"]
        answer: dict = {"ok": True}
        if op == "subscribe":
            ids = command["ids"]
            for start in range(0, len(ids), 50):
                await asyncio.gather(*(open_one(reply) for reply in ids[start : start + 50]))
            answer["open"] = len(subscriptions)
        elif op == "close_all":
            for subscription in subscriptions:
                subscription.close()
            subscriptions.clear()
        elif op == "record":
            latencies.clear()
            recording[0] = True
        elif op == "collect":
            deadline = time.monotonic() + command.get("timeout", 60)
            while len(latencies) < command["expect"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            recording[0] = False
            answer["latencies_ms"] = latencies[:]
        elif op == "quit":
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            return
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))
