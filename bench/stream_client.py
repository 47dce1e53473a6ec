"""A websocket load process for bench/streams.py: holds subscriptions, times deltas.

Commands arrive as JSON lines on stdin; each gets one JSON line back on stdout.
A delta's text is the publisher's monotonic clock reading (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop
import websockets

STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq delta } }"


async def main(url: str, token: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sockets: list[websockets.ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    latencies: list[float] = []
    recording = False

    async def open_one(reply_id: str) -> None:
        socket = await websockets.connect(
            url, subprotocols=["graphql-transport-ws"], compression=None, max_queue=64, open_timeout=120
        )
        await socket.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        await socket.recv()
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": STREAM, "variables": {"id": reply_id}}}))
        sockets.append(socket)
        readers.append(asyncio.create_task(read(socket)))

    async def read(socket: websockets.ClientConnection) -> None:
        try:
            async for raw in socket:
                message = json.loads(raw)
                if recording and message.get("type") == "next":
                    sent = float(message["payload"]["data"]["messageStream"]["delta"])
                    latencies.append((time.monotonic() - sent) * 1000)
        except websockets.ConnectionClosed:
            pass

    while True:
        command = json.loads(await reader.readline())
        op = command["op"]
        answer: dict = {"ok": True}
        if op == "subscribe":
            ids = command["ids"]
            for start in range(0, len(ids), 50):
                await asyncio.gather(*(open_one(reply) for reply in ids[start:start + 50]))
            answer["open"] = len(sockets)
        elif op == "close_all":
            await asyncio.gather(*(socket.close() for socket in sockets))
            sockets.clear()
        elif op == "record":
            latencies.clear()
            recording = True
        elif op == "collect":
            deadline = time.monotonic() + 60
            while len(latencies) < command["expect"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            recording = False
            answer["latencies_ms"] = latencies[:]
        elif op == "quit":
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            return
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))
