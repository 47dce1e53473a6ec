"""GraphiQL in a real browser with no internet, as a newcomer meets it: `gemini-graphql dev`
(offline model), headless chromium driven by tests/node/graphiql_check.mjs, every request
outside the app blocked. The page loads (its files from the app, integrity checked) with a
tab per example operation, whose examples run as they open, a query runs with the token
from the Headers tab, and a reply streams into the result pane over GraphiQL's own
websocket client."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from examples import build_collection as examples
from gemini_graphql.api.transport import graphiql
from tests.auth_flows import SEND_OTP, SIGNUP, VERIFY_OTP
from tests.chat_harness import CREATE_ROOM
from tests.node_tools import CHROMIUM_ARGS, NODE_DIR
from tests.test_dev_mode import dev_server

SCRIPT = NODE_DIR / "graphiql_check.mjs"
ASSET = re.compile(r"/graphiql/assets/[\w.-]+\.(?:js|css)")


async def run_check(url: str, token: str, chatroom_id: str, executable: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        url,
        token,
        chatroom_id,
        cwd=NODE_DIR,
        env={**os.environ, "CHROMIUM": executable, "CHROMIUM_ARGS": json.dumps(CHROMIUM_ARGS)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert stdout, stderr.decode()
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert process.returncode == 0 and "error" not in report, (report, stderr.decode())
    return report


def pane(text: str) -> Any:
    """The JSON the result pane shows (CodeMirror renders indentation as no-break spaces)."""
    return json.loads(text.replace("\u00a0", " "))


async def test_graphiql_works_offline(tmp_path: Path, node_modules: Path, chromium: str) -> None:
    number = "+14155550142"
    async with dev_server(tmp_path) as (gql, _):
        url = str(gql.http.base_url).rstrip("/")
        await gql(SIGNUP, {"input": {"mobileNumber": number}})
        code = (await gql(SEND_OTP, {"input": {"mobileNumber": number}}))["data"]["sendOtp"][
            "devCode"
        ]
        login = (await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": code}}))["data"][
            "verifyOtp"
        ]
        token, user_id = login["accessToken"], login["user"]["id"]
        room = (await gql(CREATE_ROOM, {"input": {"title": "GraphiQL"}}, token=token))["data"]
        report = await run_check(url, token, room["createChatroom"]["chatroom"]["id"], chromium)

    # Nothing left the machine, nothing failed, and every file came from the app.
    assert report["outside"] == [] and report["failed"] == []
    assert report["consoleErrors"] == [] and report["pageErrors"] == []
    origin = url + "/"
    assert all(request.startswith(origin) for request in report["requests"]), report["requests"]
    loaded = sorted(request[len(url) :] for request in report["requests"] if ASSET.search(request))
    assert len(loaded) == 7, report["requests"]
    assert [sheet["applied"] for sheet in report["stylesheets"]] == [True, True]
    assert report["websockets"] == [url.replace("http://", "ws://") + "/graphql"]

    # A tab per example operation, titled with its name, in the order of the examples; the
    # first opens with its query and variables, runs as it is, and so does another one.
    tabs = json.loads(graphiql.EXAMPLE_TABS.read_text())
    names = [operation.name.value for operation in examples.load_operations() if operation.name]
    assert report["tabs"] == names and len(names) == len(tabs) > 20
    first, send_otp = tabs[0], tabs[names.index("SendOtp")]
    assert report["firstTab"]["active"] == "Signup"
    assert report["firstTab"]["query"] == first["query"]
    assert json.loads(report["firstTab"]["variables"]) == json.loads(first["variables"])
    signup = pane(report["signup"])["data"]["signup"]
    example_number = json.loads(first["variables"])["input"]["mobileNumber"]
    assert signup["errors"] == [] and signup["user"]["mobileNumber"] == example_number
    assert report["sendOtpTab"]["active"] == "SendOtp"
    assert report["sendOtpTab"]["query"] == send_otp["query"]
    assert json.loads(report["sendOtpTab"]["variables"]) == json.loads(send_otp["variables"])
    sent = pane(report["sendOtp"])["data"]["sendOtp"]
    assert sent["sent"] is True and sent["errors"] == []
    assert re.fullmatch(r"\d{6}", sent["devCode"]), sent

    # `{ me { id } }` with the Headers tab's token.
    assert pane(report["me"]) == {"data": {"me": {"id": user_id}}}

    # The reply streamed in: event after event in the pane, then the stored message.
    events = [
        pane(text)["data"]["messageStream"]
        for text in report["stream"]
        if '"messageStream"' in text  # the pane's earlier contents, and its clearing, aside
    ]
    streaming = [event for event in events if event["status"] == "STREAMING"]
    assert len(streaming) >= 5, events
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(set(seqs)), seqs
    final = events[-1]
    assert final["status"] == "COMPLETE" and final["delta"] == ""
    content = final["message"]["content"]
    assert content.startswith("[offline model") and report["content"] in content
    position = 0  # each delta shown is the next piece of the final text
    for event in streaming:
        found = content.find(event["delta"], position)
        assert found >= position, (event, content)
        position = found + len(event["delta"])
    assert report["tookMs"] < 20_000
