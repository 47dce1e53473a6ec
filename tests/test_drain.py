"""SIGTERM drains a real `gemini-graphql serve`: not ready at once, serving (HTTP and
websockets, new connections too) for DRAIN_GRACE_SECONDS, then uvicorn's shutdown (websockets
closed with 1012) and exit 0; a second signal skips the wait; `--workers 2`: every child."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gemini_graphql.config import PRODUCTION_DRAIN_GRACE_SECONDS, ConfigError, Settings
from gemini_graphql.testing.processes import Process, start_api
from tests.chat_harness import Subscription, closed_with, subscribe, user_with_room
from tests.conftest import GraphQLClient, RecordingSms
from tests.servers import child_pids

# Long enough for the checks made while draining (a few requests) on a busy machine; a grace
# over before they finish fails the test, it does not pass it.
GRACE_SECONDS = 5.0
# A grace no test waits out: the process ending within WAIT_SECONDS shows it was skipped.
LONG_GRACE_SECONDS = 300.0
WAIT_SECONDS = 60  # failure guards only
EVENTS = "subscription { chatroomEvents { type chatroom { id title } } }"
RENAME = """mutation($input: UpdateChatroomInput!) { updateChatroom(input: $input) {
  chatroom { id title } errors { code field message } } }"""
DRAINING = {"postgres": "ok", "redis": "ok", "process": "draining"}


def ws_of(url: str) -> str:
    return url.replace("http://", "ws://") + "/graphql"


async def rename(gql: GraphQLClient, token: str, room_id: str, title: str) -> None:
    body = await gql(RENAME, {"input": {"id": room_id, "title": title}}, token=token)
    assert body["data"]["updateChatroom"]["errors"] == [], body


async def renamed_to(events: Subscription, title: str) -> None:
    """Until the event of the rename to `title` arrives (earlier renames' events are skipped)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while (await events.next())["chatroomEvents"]["chatroom"]["title"] != title:
            pass


async def events_live(
    events: Subscription, gql: GraphQLClient, token: str, room_id: str, title: str
) -> None:
    """Renames until one's event arrives: the subscription's channel is being listened to."""
    async with asyncio.timeout(WAIT_SECONDS):
        for attempt in range(10**6):
            await rename(gql, token, room_id, f"{title} {attempt}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(renamed_to(events, f"{title} {attempt}"), 0.5)
                return


async def pong(socket: websockets.ClientConnection) -> None:
    """graphql-transport-ws ping, answered by the server's pong (other messages skipped)."""
    await socket.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(WAIT_SECONDS):
        while json.loads(await socket.recv())["type"] != "pong":
            pass


def socket_of(events: Subscription) -> websockets.ClientConnection:
    return events._client.socket


async def until_ready_is(http: httpx.AsyncClient, status: int) -> httpx.Response:
    async with asyncio.timeout(WAIT_SECONDS):
        while (response := await http.get("/health/ready")).status_code != status:
            await asyncio.sleep(0.05)
        return response


async def exit_status(api: Process) -> int | None:
    async with asyncio.timeout(WAIT_SECONDS):
        while api.popen.poll() is None:
            await asyncio.sleep(0.05)
    return api.popen.returncode


@pytest.fixture
async def logged_in(make_client, sms: RecordingSms) -> tuple[str, str]:
    """(token, room id) of a user logged in through an in-process app on the same stores."""
    user, room_id = await user_with_room(GraphQLClient(await make_client()), sms)
    return user.token, room_id


@contextlib.asynccontextmanager
async def serving(settings: Settings, *args: str) -> AsyncIterator[tuple[Process, str]]:
    api, url = await start_api(settings, args=("serve", *args, "--port"))
    try:
        yield api, url
    finally:
        if api.popen.poll() is None:  # the test failed before it stopped
            api.kill()


def test_the_grace_is_10_s_in_production_and_none_elsewhere_unless_set() -> None:
    production = {
        "APP_ENV": "production",
        "SECRET_KEY": "k" * 16 + "3xAmple-only-Not-A-Real-Key-0123456789",
        "GEMINI_API_KEY": "key",
        "SMS_BACKEND": "webhook",
        "SMS_WEBHOOK_URL": "https://sms.example.com/send",
    }
    assert Settings.from_env(production).drain_grace_seconds == PRODUCTION_DRAIN_GRACE_SECONDS
    assert Settings.from_env({**production, "DRAIN_GRACE_SECONDS": "0"}).drain_grace_seconds == 0
    assert Settings.from_env({}).drain_grace_seconds == 0  # dev: Ctrl-C stops at once
    test = Settings.from_env({"APP_ENV": "test", "DRAIN_GRACE_SECONDS": "2.5"})
    assert test.drain_grace_seconds == 2.5
    with pytest.raises(ConfigError, match="DRAIN_GRACE_SECONDS"):
        Settings.from_env({"DRAIN_GRACE_SECONDS": "-1"})


async def test_sigterm_drains_then_closes_websockets_with_1012_and_exits_0(
    base_settings: Settings, logged_in: tuple[str, str]
) -> None:
    token, room_id = logged_in
    settings = replace(base_settings, drain_grace_seconds=GRACE_SECONDS)
    async with (
        serving(settings) as (api, url),
        httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http,
        subscribe(ws_of(url), token, EVENTS) as events,
    ):
        gql = GraphQLClient(http)
        await events_live(events, gql, token, room_id, "before")
        assert (await http.get("/health/ready")).status_code == 200

        api.popen.send_signal(signal.SIGTERM)
        ready = await until_ready_is(http, 503)
        assert ready.json() == {"status": "draining", "checks": DRAINING}
        assert (await http.get("/health/live")).status_code == 200
        health = await http.get("/health")  # the stores only, as ever
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        # GraphQL over HTTP, the open websocket, and a websocket opened now all still work.
        await rename(gql, token, room_id, "while draining")
        await renamed_to(events, "while draining")
        await pong(socket_of(events))
        async with subscribe(ws_of(url), token, EVENTS) as late:
            await pong(socket_of(late))
            assert (await http.get("/health/ready")).status_code == 503  # still in the grace

            assert await closed_with(socket_of(late)) == 1012
        assert await closed_with(socket_of(events)) == 1012
        assert await exit_status(api) == 0


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
async def test_a_second_sigterm_skips_the_grace(
    base_settings: Settings, logged_in: tuple[str, str], workers: int
) -> None:
    token, _ = logged_in
    settings = replace(base_settings, drain_grace_seconds=LONG_GRACE_SECONDS)
    async with (
        serving(settings, "--workers", str(workers)) as (api, url),
        httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http,
        subscribe(ws_of(url), token, EVENTS) as events,
    ):
        await pong(socket_of(events))
        api.popen.send_signal(signal.SIGTERM)
        await until_ready_is(http, 503)
        api.popen.send_signal(signal.SIGTERM)
        assert await closed_with(socket_of(events)) == 1012
        assert await exit_status(api) == 0


# --- `serve --workers 2`: which child holds a connection -----------------------------------


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the server-side TCP socket of the connection from `remote_port` to
    `local_port` on this machine (/proc/net/tcp and tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)) == (
                local_port,
                remote_port,
            ):
                return int(fields[9])
    return None


def serving_child(children: list[int], server_port: int, client_port: int) -> int | None:
    """Which of the api's children accepted the connection from `client_port`."""
    inode = _socket_inode(server_port, client_port)
    for pid in children:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name == f"socket:[{inode}]":
                        return pid
    return None


def server_children(api: Process) -> list[int]:
    """The api's uvicorn children (multiprocessing's resource tracker is a child too)."""
    return [
        pid
        for pid in child_pids(api.pid)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


class RawConnection:
    """One HTTP/1.1 keep-alive connection, so that requests go to one known child."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.client_port: int = writer.get_extra_info("sockname")[1]

    async def get(self, path: str) -> tuple[int, Any]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


async def test_two_workers_each_drain(base_settings: Settings, logged_in: tuple[str, str]) -> None:
    """Websockets and keep-alive connections held by each of the two children: after SIGTERM
    to the supervisor (what an orchestrator signals), each child answers not ready on its own
    connection and keeps its websockets through the grace, then closes them with 1012."""
    token, _ = logged_in
    settings = replace(base_settings, drain_grace_seconds=GRACE_SECONDS)
    async with contextlib.AsyncExitStack() as stack:
        api, url = await stack.enter_async_context(serving(settings, "--workers", "2"))
        port = int(url.rsplit(":", 1)[1])
        sockets: dict[int, websockets.ClientConnection] = {}
        connections: dict[int, RawConnection] = {}
        async with asyncio.timeout(WAIT_SECONDS):  # until each child holds a websocket...
            while len(sockets) < 2:
                events = await stack.enter_async_context(subscribe(ws_of(url), token, EVENTS))
                await pong(socket_of(events))
                ws_port = socket_of(events).local_address[1]
                if pid := serving_child(server_children(api), port, ws_port):
                    sockets.setdefault(pid, socket_of(events))
            while len(connections) < 2:  # ...and a keep-alive connection (idle for < 5 s)
                raw = RawConnection(*await asyncio.open_connection("127.0.0.1", port))
                stack.callback(raw.close)
                assert (await raw.get("/health/ready"))[0] == 200
                if pid := serving_child(list(sockets), port, raw.client_port):
                    connections.setdefault(pid, raw)
        assert sockets.keys() == connections.keys() and len(sockets) == 2

        api.popen.send_signal(signal.SIGTERM)
        for pid, raw in connections.items():
            async with asyncio.timeout(WAIT_SECONDS):
                while (answer := await raw.get("/health/ready"))[0] != 503:
                    await asyncio.sleep(0.05)
            assert answer[1] == {"status": "draining", "checks": DRAINING}, pid
        for socket in sockets.values():
            await pong(socket)  # both children's websockets outlive the signal
        for socket in sockets.values():
            assert await closed_with(socket) == 1012
        assert await exit_status(api) == 0
