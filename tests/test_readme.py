"""README.md's examples, run as written against a live dev server (`gemini-graphql dev`:
SQLite, embedded Redis, the offline model), so an edited example is a tested example.

Every fenced block in a runnable language (sh, python, js, graphql) either runs here or
says why it cannot, in a `<!-- not run: reason -->` line just above it. The only change
made to a block is the address: the README's 127.0.0.1:8000 becomes the test server's.
GraphiQL's blocks run operation by operation, with the `<placeholders>` a reader fills in
taken from the answers before them, as a reader would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphql
import pytest

from gemini_graphql.testing.processes import free_port
from tests.chat_harness import Subscription, subscribe
from tests.conftest import GraphQLClient
from tests.node_tools import CHROMIUM_ARGS, NODE_DIR
from tests.test_dev_mode import dev_server

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = {"sh", "python", "js", "html", "graphql"}
BLOCK = re.compile(
    r"(?:<!-- not run: (?P<reason>[^>]+?) -->\n)?^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$",
    re.S | re.M,
)
README_ADDRESS = "127.0.0.1:8000"


@dataclass
class Block:
    lang: str
    body: str
    line: int
    skip_reason: str | None

    def at(self, address: str) -> str:
        return self.body.replace(README_ADDRESS, address)


def blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(m["lang"], m["body"], text[: m.start()].count("\n") + 1, m["reason"])
        for m in BLOCK.finditer(text)
    ]


def runnable() -> list[Block]:
    return [block for block in blocks() if block.lang in RUNNABLE and not block.skip_reason]


def test_every_runnable_block_runs_here_or_says_why_not() -> None:
    for block in blocks():
        if block.lang in RUNNABLE and block.skip_reason:
            assert len(block.skip_reason.split()) >= 3, f"README.md:{block.line}: say why"
    kinds = [block.lang for block in runnable()]
    # What test_the_readme_as_written runs, in README order: a new block must be added there.
    assert kinds == ["graphql", "graphql", "sh", "js", "html", "python", "graphql", "js"], kinds


@dataclass
class Reader:
    """What a reader has noted down so far: the values of the placeholders."""

    gql: GraphQLClient
    ws_url: str
    values: dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        for name, value in self.values.items():
            text = text.replace(f"<{name}>", value)
        assert not re.search(r'"<[^">]+>"', text), f"an unfilled placeholder in {text}"
        return text

    def note(self, data: dict[str, Any]) -> None:
        """The ids a later example asks for, from this answer."""
        if code := dig(data, "sendOtp", "devCode"):
            self.values["devCode"] = code
        if token := dig(data, "verifyOtp", "accessToken"):
            self.values["accessToken"] = token
        if room := dig(data, "createChatroom", "chatroom", "id"):
            self.values["room id"] = room
        if reply := dig(data, "sendMessage", "reply", "id"):
            self.values["reply id"] = reply
            self.values["message id"] = dig(data, "sendMessage", "message", "id")
            self.values["the first version's id"] = self.values["message id"]

    async def run(self, operation: str) -> dict[str, Any]:
        token = self.values.get("accessToken")
        if operation.lstrip().startswith("subscription"):
            assert token
            async with subscribe(self.ws_url, token, operation) as sub:
                events = await until_complete(sub)
            assert events and events[-1]["messageStream"]["status"] == "COMPLETE", events
            return events[-1]
        body = await self.gql(operation, token=token)
        assert "errors" not in body, body
        for name, payload in body["data"].items():
            if isinstance(payload, dict) and "errors" in payload:
                allowed = {"MOBILE_NUMBER_TAKEN"} if name == "signup" else set()
                codes = {error["code"] for error in payload["errors"]}
                assert codes <= allowed, (operation, payload)
        self.note(body["data"])
        return body["data"]


def dig(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


async def until_complete(sub: Subscription) -> list[dict[str, Any]]:
    events = []
    while True:
        message = await sub.first_message(timeout=30)
        if message["type"] == "complete":
            return events
        assert message["type"] == "next" and not message["payload"].get("errors"), message
        events.append(message["payload"]["data"])


def operations(block: Block) -> list[str]:
    document = graphql.parse(block.body)
    return [graphql.print_ast(definition) for definition in document.definitions]


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[tuple[GraphQLClient, str, str]]:
    async with dev_server(tmp_path) as (gql, ws_url):
        address = str(gql.http.base_url).removeprefix("http://").rstrip("/")
        yield gql, ws_url, address


async def shell(script: str, cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    return output


async def program(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    return output


async def test_the_readme_as_written(
    dev: tuple[GraphQLClient, str, str], node_modules: Path, chromium: str, tmp_path: Path
) -> None:
    gql, ws_url, address = dev
    walk, graphiql, curl, node_chat, browser_chat, python_chat, versions, node_events = runnable()
    reader = Reader(gql, ws_url)

    # GraphiQL, step by step (the Authorization header is the accessToken noted down).
    for block in (walk, graphiql):
        for operation in operations(block):
            await reader.run(reader.fill(operation))
    assert set(reader.values) >= {"devCode", "accessToken", "room id", "reply id"}

    # curl: prints JSON answers, then the token and room for the client examples.
    output = await shell(curl.at(address), tmp_path)
    answers = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert answers and all("errors" not in answer for answer in answers), output
    for answer in answers:
        for payload in answer["data"].values():
            assert not (isinstance(payload, dict) and payload.get("errors")), answer
    credentials = dict(item.split("=", 1) for item in output.strip().splitlines()[-1].split(" "))
    token, room = credentials["TOKEN"], credentials["ROOM"]
    me = await gql("{ me { mobileNumber } }", token=token)
    assert me["data"]["me"]["mobileNumber"] != ""

    # The clients: each sends a message and prints its streamed reply.
    (tmp_path / "node_modules").symlink_to(node_modules)
    (tmp_path / "chat.mjs").write_text(node_chat.at(address))
    printed = await program("node", "chat.mjs", token, room, cwd=tmp_path)
    assert "Hello from Node" in printed and re.search(r"\(\d+ events\)\s*$", printed), printed
    (tmp_path / "chat.html").write_text(browser_chat.at(address))
    shown = await in_browser(tmp_path, chromium, f"chat.html?token={token}&room={room}")
    assert "Hello from the browser" in shown and re.search(r"\(\d+ events\)$", shown), shown
    (tmp_path / "chat.py").write_text(python_chat.at(address))
    printed = await program(sys.executable, "chat.py", token, room, cwd=tmp_path)
    assert "Hello from Python" in printed and re.search(r"\(\d+ events\)\s*$", printed), printed

    # Versions, rooms: GraphiQL again, with the ids of the walk-through.
    for operation in operations(versions):
        data = await reader.run(reader.fill(operation))
    assert data == {"deleteChatroom": {"deletedId": reader.values["room id"], "errors": []}}

    # Room events: the script sends, stops its reply at once, and prints the events.
    (tmp_path / "events.mjs").write_text(node_events.at(address))
    printed = await program("node", "events.mjs", token, room, cwd=tmp_path)
    lines = printed.splitlines()
    assert lines[0].startswith("MESSAGE_ADDED") and "USER" in lines[0], printed
    assert any(line.startswith("stopped: STOPPED") for line in lines), printed
    assert lines[-1].startswith("REPLY_FINISHED") and "ASSISTANT STOPPED" in lines[-1], printed


async def in_browser(folder: Path, chromium: str, page: str) -> str:
    """What the README's page shows, served as it says (`python3 -m http.server`), in
    headless chromium with nothing reachable but this machine."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port)
        output = await program(
            "node",
            str(NODE_DIR / "page_check.mjs"),
            f"http://127.0.0.1:{port}/{page}",
            "#reply",
            r"\(\d+ events\)$",
            cwd=NODE_DIR,
            env={"CHROMIUM": chromium, "CHROMIUM_ARGS": json.dumps(CHROMIUM_ARGS)},
        )
    finally:
        server.terminate()
        await server.wait()
    report = json.loads(output.strip().splitlines()[-1])
    assert report["outside"] == [] and report["pageErrors"] == [], report
    assert "error" not in report, report
    return report["shown"]


async def wait_for_port(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


def test_the_python_example_is_a_script_of_its_own() -> None:
    """It runs as `python chat.py TOKEN ROOM`: complete, no top-level await."""
    [python_chat] = [block for block in runnable() if block.lang == "python"]
    compile(python_chat.body, "chat.py", "exec")  # top-level `async with` would not compile
    assert 'if __name__ == "__main__":' in python_chat.body
    assert "variable_values=" not in re.sub(r"GraphQLRequest\([^)]*\)", "", python_chat.body)
