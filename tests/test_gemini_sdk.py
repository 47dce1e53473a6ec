"""GeminiModel skips google-genai's models layer and uses private parts of its HTTP client
(see gemini_graphql/ai/gemini.py). Here it is held to what the SDK's own
`generate_content_stream` sends and reads, byte for byte on the wire, so that an upgrade which
changes either fails here, by name, instead of in production."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gemini_graphql.ai.gemini import RETRYABLE_STATUS, GeminiModel
from gemini_graphql.ai.model import Chunk, ModelError, TokenCounts, Turn
from gemini_graphql.config import Settings
from tests.live import serve

TURNS = [
    Turn("user", 'Hi \u2603, what\'s "new"?\n'),
    Turn("model", "Not much."),
    Turn("user", ""),
    Turn("user", "Tell me more."),
]
Hop = int | list[Any]  # an HTTP error status, or the stream's events (JSON, or raw text)


def answer(text: str, **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, **candidate}]}


def usage(prompt: int, output: int, total: int | None = None) -> dict[str, Any]:
    counts = {"promptTokenCount": prompt, "candidatesTokenCount": output}
    if total is not None:
        counts["totalTokenCount"] = total
    return {"usageMetadata": counts}


SCENARIOS: dict[str, list[Hop]] = {
    "chunks": [
        [
            {**answer("Hello "), **usage(9, 1, 10), "responseId": "r1"},
            {**answer("there"), **usage(9, 2, 11), "responseId": "r1"},
            {**answer(".", finishReason="STOP"), **usage(9, 3, 12), "responseId": "r1"},
        ]
    ],
    "parts": [
        [
            {
                "candidates": [
                    {
                        "content": {
                            "parts": [
                                {"text": "pondering", "thought": True},
                                {"text": "a"},
                                {"functionCall": {"name": "f", "args": {}}},
                                {"text": "b", "thought": False},
                            ],
                            "role": "model",
                        }
                    },
                    {"content": {"parts": [{"text": "other candidate"}]}},
                ],
                "responseId": "r2",
            },
            {"candidates": [{"finishReason": "STOP"}], **usage(4, 2, 6)},
            {**answer("no total"), **usage(4, 3)},
            {"usageMetadata": {"promptTokenCount": 4}},
            {},
            {**answer(""), "responseId": "r2"},
            {**answer("c", finishReason="MAX_TOKENS"), "modelVersion": "m", "responseId": "r2"},
        ]
    ],
    "continuation": [
        [
            {**answer("one "), **usage(5, 1, 6), "responseId": "r3"},
            {
                **answer("two ", finishReason="CONTINUATION", continuationToken="YWJj/+8"),
                **usage(5, 2, 7),
                "responseId": "r3",
            },
        ],
        [
            {**answer("three "), "responseId": "r4"},
            {
                **answer("four", finishReason="CONTINUATION", continuationToken="ZGVm"),
                **usage(5, 2, 7),
            },
        ],
        [{**answer(".", finishReason="STOP"), **usage(6, 1, 7), "responseId": "r5"}],
    ],
    "the same token again": [
        [{**answer("a", finishReason="CONTINUATION", continuationToken="YWJj")}],
        [{**answer("b", finishReason="CONTINUATION", continuationToken="YWJj")}],
    ],
    "ended early with a token": [
        [answer("a", continuationToken="YWJj")],
        [answer("b", finishReason="STOP")],
    ],
    "prompt feedback": [
        [
            {
                **answer("x", finishReason="CONTINUATION", continuationToken="YWJj"),
                "promptFeedback": {"blockReason": "SAFETY"},
            }
        ]
    ],
    "error event": [
        [
            answer("partial "),
            {"error": {"code": 503, "message": "Overloaded.", "status": "UNAVAILABLE"}},
            answer("never read"),
        ]
    ],
    "error event first": [
        [{"error": {"code": 429, "message": "Slow down.", "status": "RESOURCE_EXHAUSTED"}}]
    ],
    "status 400": [400],
    "status 503": [503],
    "not json": [[answer("a"), "not json"]],
}


@dataclass
class Scripted:
    """A Gemini that answers each request with the next hop of a scenario."""

    hops: list[Hop] = field(default_factory=list)
    requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        headers = sorted((k, v) for k, v in request.headers.items() if k != "host")
        self.requests.append((request.url.path, request.url.query, headers, await request.body()))
        hop = self.hops.pop(0) if self.hops else [answer("no more", finishReason="STOP")]
        if isinstance(hop, int):
            error = {"code": hop, "message": "Scripted.", "status": "SCRIPTED"}
            return JSONResponse({"error": error}, status_code=hop)

        async def events() -> AsyncIterator[bytes]:
            for event in hop:
                data = event if isinstance(event, str) else json.dumps(event)
                yield f"data: {data}\r\n\r\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")


async def through_models_layer(
    settings: Settings, turns: list[Turn], system_instruction: str | None
) -> AsyncIterator[Chunk]:
    """What GeminiModel.stream did through `generate_content_stream` (google-genai 3.6.1)."""
    client = genai.Client(
        api_key=settings.gemini_api_key,
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            timeout=int(settings.gemini_timeout_seconds * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    contents: list[types.ContentDict] = [
        {"role": turn.role, "parts": [{"text": turn.text}]} for turn in turns
    ]
    config: types.GenerateContentConfigDict = {}
    if system_instruction:
        config["system_instruction"] = system_instruction
    try:
        response = await client.aio.models.generate_content_stream(
            model=settings.gemini_model, contents=contents, config=config
        )
        async for piece in response:
            text = piece.text or ""
            metadata = piece.usage_metadata
            counts = None
            if metadata is not None and metadata.total_token_count is not None:
                counts = TokenCounts(
                    prompt=metadata.prompt_token_count or 0,
                    output=metadata.candidates_token_count or 0,
                    total=metadata.total_token_count,
                )
            if text or counts is not None:
                yield Chunk(text=text, response_id=piece.response_id, usage=counts)
    except errors.APIError as exc:
        retryable = exc.code in RETRYABLE_STATUS
        raise ModelError(str(exc.code), retryable=retryable, user_message="") from exc
    finally:
        await client.aio.aclose()


async def ours(
    settings: Settings, turns: list[Turn], system_instruction: str | None
) -> AsyncIterator[Chunk]:
    model = GeminiModel(settings)
    try:
        async for chunk in model.stream(turns, system_instruction):
            yield chunk
    except ModelError as exc:
        assert isinstance(exc.__cause__, errors.APIError)
        code = exc.__cause__.code
        raise ModelError(str(code), retryable=exc.retryable, user_message="") from exc
    finally:
        await model.aclose()


async def run(stream: AsyncIterator[Chunk]) -> tuple[list[Chunk], str | None]:
    chunks: list[Chunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except ModelError as exc:
        return chunks, f"ModelError {exc} retryable={exc.retryable}"
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        return chunks, type(exc).__name__
    return chunks, None


@pytest.mark.parametrize("system_instruction", ["Be brief. \u2713", None])
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_the_same_requests_and_results_as_the_models_layer(
    scenario: str, system_instruction: str | None
) -> None:
    gemini = Scripted()
    async with serve(gemini.app) as url:
        settings = Settings(gemini_api_key="key", gemini_base_url=url, gemini_timeout_seconds=5)
        results = []
        for stream in (through_models_layer, ours):
            gemini.hops = list(SCENARIOS[scenario])
            gemini.requests.clear()
            outcome = await run(stream(settings, TURNS, system_instruction))
            results.append((outcome, list(gemini.requests)))
    (sdk_outcome, sdk_requests), (our_outcome, our_requests) = results
    assert our_outcome == sdk_outcome
    assert our_requests == sdk_requests
    assert sdk_outcome[0] or sdk_outcome[1]  # the scenario did something


@pytest.mark.parametrize("name", ["gemini-2.5-flash", "models/gemini-x", "tunedModels/123"])
async def test_model_names_make_the_same_paths(name: str) -> None:
    gemini = Scripted()
    async with serve(gemini.app) as url:
        settings = Settings(gemini_api_key="key", gemini_base_url=url, gemini_model=name)
        for stream in (through_models_layer, ours):
            await run(stream(settings, TURNS[:1], None))
    sdk_request, our_request = gemini.requests
    assert our_request == sdk_request


def test_a_bad_model_name_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="invalid model"):
        GeminiModel(Settings(gemini_api_key="key", gemini_model="../models/x"))
