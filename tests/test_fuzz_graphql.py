"""A bounded schemathesis fuzz run over every query and mutation, against the real app.

Schemathesis (hypothesis-graphql underneath) generates documents for each root field of the
app's own schema, valid ones (positive) and ones the schema must reject (negative). They are
sent through the app's real ASGI interface, once without a token and once as a logged-in user,
and every answer must be a GraphQL answer: never a 5xx, JSON with `data` and/or `errors`, no
INTERNAL_SERVER_ERROR, nothing from LEAK_PATTERNS.

Hypothesis runs in a worker thread and hands each request to the session's event loop (the
one the app's database and Redis pools live on), so it keeps its own control of generation
and shrinking: a failure is reported with the smallest document that still fails.
Bounded for CI: FUZZ_MAX_EXAMPLES (default 15) examples per field, mode and login, fixed seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import traceback
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import SkipTest

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.generation.feedback import FeedbackSources

from gemini_graphql.api.schema import build_schema
from gemini_graphql.testing.fakes.stripe import PRICE_ID, SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.auth_flows import VERIFY_OTP, LoggedIn, login, send_code, signup
from tests.chat_harness import create_room, send
from tests.conftest import LEAK_PATTERNS, FakeClock, GraphQLClient, RecordingSms
from tests.live import serve

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "15"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same documents on every run
    database=None,  # nothing remembered between runs either
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    report_multiple_bugs=False,
    print_blob=False,
)
USER_NUMBER = "+14155550101"
OTHER_NUMBER = "+14155550102"
ACCEPTS = ("application/json", "application/graphql-response+json")


def fuzz_config(room_ids: list[str]) -> SchemathesisConfig:
    """Values the generator mixes in, so documents get past input checks to the code behind them
    (valid numbers, the logged-in user's own, codes, passwords, real chatroom ids), and
    hostile text for the free-text fields (NUL, a lone surrogate, just over each length limit)."""
    numbers = [USER_NUMBER, "+1 415-555-0101", OTHER_NUMBER, "+14155550103", "+442079460958", "+1"]
    return SchemathesisConfig.from_dict(
        {
            "dictionaries": {
                "numbers": {"values": numbers},
                "codes": {"values": ["000000", "123456", "12345", "1234567", " 000000 "]},
                "passwords": {"values": ["correct horse battery", "short", "p" * 128, "p" * 129]},
                "rooms": {"values": [*room_ids, "00000000-0000-0000-0000-000000000000", "room"]},
                "text": {
                    "values": [
                        "",
                        "   ",
                        "\x00",
                        "a\x00b",
                        "\ud800",
                        "\u202e\u0301",
                        "😀" * 300,
                        "t" * 256,
                        "d" * 2001,
                        "c" * 10001,
                        "a@b.co",
                    ]
                },
            },
            "parameters": {
                "*.*.input.mobileNumber": {"dictionary": "numbers", "probability": 0.6},
                "*.*.input.code": {"dictionary": "codes", "probability": 0.5},
                "*.*.input.password": {"dictionary": "passwords", "probability": 0.5},
                "*.*.input.newPassword": {"dictionary": "passwords", "probability": 0.5},
                "*.*.input.currentPassword": {"dictionary": "passwords", "probability": 0.5},
                "*.*.input.chatroomId": {"dictionary": "rooms", "probability": 0.6},
                "Query.chatroom.id": {"dictionary": "rooms", "probability": 0.6},
                **{
                    f"*.*.input.{name}": {"dictionary": "text", "probability": 0.4}
                    for name in ("title", "description", "content", "name", "email")
                },
            },
        }
    )


@pytest.fixture
async def stripe_url() -> AsyncIterator[str]:
    async with serve(FakeStripe().app) as url:
        yield url


@pytest.fixture
async def http(
    make_client: Callable[..., Awaitable[httpx.AsyncClient]], stripe_url: str
) -> httpx.AsyncClient:
    return await make_client(
        # Throttles high enough that RATE_LIMITED never hides the code behind them.
        auth_rate_per_ip=1_000_000,
        auth_rate_per_number=1_000_000,
        stripe_secret_key=SECRET_KEY,
        stripe_publishable_key="pk_test_fake",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_price_id=PRICE_ID,
        stripe_api_base=stripe_url,
        stripe_timeout_seconds=1.0,
    )


def problems(response: httpx.Response) -> list[str]:
    """What is wrong with one answer; empty when it is a proper GraphQL answer."""
    found = []
    text = response.text
    if response.status_code >= 500:
        found.append(f"status {response.status_code}")
    if LEAK_PATTERNS.search(text):
        found.append("the body leaks internals")
    try:
        payload = json.loads(text)
    except ValueError:
        return [*found, "the body is not JSON"]
    if not isinstance(payload, dict) or not ({"data", "errors"} & payload.keys()):
        return [*found, "the body has neither data nor errors"]
    for error in payload.get("errors") or []:
        if ((error or {}).get("extensions") or {}).get("code") == "INTERNAL_SERVER_ERROR":
            found.append("INTERNAL_SERVER_ERROR")
    return found


def error_codes(response: httpx.Response) -> set[str]:
    try:
        payload = response.json()
    except ValueError:
        return set()
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return {
        str((error.get("extensions") or {}).get("code"))
        for error in errors or []
        if isinstance(error, dict)
    }


async def relogin(gql: GraphQLClient, sms: RecordingSms, clock: FakeClock, number: str) -> str:
    """A fresh token by code, as the user would get one. The fuzzer also asks for codes for this
    number, so past the hourly allowance of codes the (fake) clock moves on an hour first."""
    sent = await send_code(gql, number)
    if any(error["code"] == "OTP_THROTTLED" for error in sent["errors"]):
        clock.advance(hours=1, minutes=1)
        sent = await send_code(gql, number)
    assert sent["sent"] and sent["errors"] == [], sent
    body = await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": sms.last_code(number)}})
    payload = body["data"]["verifyOtp"]
    assert payload["errors"] == [], payload
    return payload["accessToken"]


def outcome(response: httpx.Response) -> str:
    """A short label of what the app did, for the summary."""
    try:
        payload = response.json()
    except ValueError:
        return f"{response.status_code} non-JSON"
    codes = sorted(
        {
            str((e.get("extensions") or {}).get("code", "no code"))
            for e in payload.get("errors") or []
        }
    )
    if payload.get("data") and not codes:
        return f"{response.status_code} data"
    return f"{response.status_code} {'+'.join(codes) or 'data null'}"


@pytest.mark.parametrize("who", ["anonymous", "user"])
async def test_fuzz_every_query_and_mutation(
    who: str, http: httpx.AsyncClient, sms: RecordingSms, clock: FakeClock
) -> None:
    started = time.monotonic()
    gql = GraphQLClient(http)
    loop = asyncio.get_running_loop()

    # Someone else's account and room, and (for the user run) the user's own.
    other = await login(gql, sms, await signup(gql, OTHER_NUMBER, password="other password 1"))
    room_ids = [await create_room(gql, other.token, "Someone else's")]
    user: LoggedIn | None = None
    if who == "user":
        user = await login(gql, sms, await signup(gql, USER_NUMBER, name="Fuzz"))
        room_ids.append(await create_room(gql, user.token, "Mine"))
        await send(gql, user.token, room_ids[-1], "Hello")
    token = user.token if user else None

    schema = schemathesis.graphql.from_file(build_schema().as_str(), config=fuzz_config(room_ids))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"Query.me", "Mutation.sendMessage"}

    counts: dict[str, Counter[str]] = {}  # per field and mode: what the app answered
    relogins = 0

    async def post(case: Any) -> httpx.Response:
        nonlocal token, relogins
        document = case.body
        accept = ACCEPTS[zlib.crc32(document.encode(errors="surrogatepass")) % len(ACCEPTS)]
        # ASCII JSON (\uXXXX escapes), so a lone surrogate reaches the server as a client sends it.
        content = json.dumps({"query": document}).encode()
        for attempt in range(2):
            headers = {"Accept": accept, "Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = await http.post("/graphql", content=content, headers=headers)
            if user is None or attempt or "UNAUTHENTICATED" not in error_codes(response):
                return response
            # changePassword retires every older token: log in again and send the case again.
            relogins += 1
            token = await relogin(gql, sms, clock, user.number)
        return response

    def run(operation: Any, mode: GenerationMode) -> None:
        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode, feedback=FeedbackSources()))
        def fuzz(case: Any) -> None:
            try:
                response = asyncio.run_coroutine_threadsafe(post(case), loop).result(timeout=30)
            except AssertionError as error:  # the client's own leak check
                raise AssertionError(f"{who} {operation.label}:\n{case.body}\n{error}") from None
            counts.setdefault(f"{operation.label} {mode.value}", Counter())[outcome(response)] += 1
            found = problems(response)
            assert not found, (
                f"{who} {operation.label} ({mode.value}): {', '.join(found)}\n"
                f"document:\n{case.body}\n"
                f"request id: {response.headers.get('x-request-id')}\n"
                f"response {response.status_code}: {response.text[:2000]}"
            )

        fuzz()

    def run_all() -> list[str]:
        failures = []
        for operation in operations:
            for mode in MODES:
                try:
                    run(operation, mode)
                except SkipTest:  # no argument to break: no negative documents for this field
                    continue
                except AssertionError as error:  # every field is fuzzed, then all are reported
                    failures.append(str(error))
                except Exception:  # noqa: BLE001 - a broken harness, not a finding: say where
                    failures.append(f"{operation.label} ({mode.value}):\n{traceback.format_exc()}")
        return failures

    failures = await asyncio.to_thread(run_all)

    outcomes = sum(counts.values(), Counter())
    total = outcomes.total()
    elapsed = time.monotonic() - started
    # Requests sent, shrinking included; each line: field, mode, then what the app answered.
    print(f"\n[fuzz {who}] {total} cases in {elapsed:.1f}s, {relogins} re-logins")
    for label, answers in sorted(counts.items()):
        summary = ", ".join(f"{answer}: {n}" for answer, n in answers.most_common())
        print(f"  {answers.total():4d}  {label:38} {summary}")
    assert not failures, "\n\n".join(failures)
    assert total >= len(operations) * 2, counts
    if user:  # the token really was used
        assert counts["Query.me positive"].get("200 data"), counts["Query.me positive"]
