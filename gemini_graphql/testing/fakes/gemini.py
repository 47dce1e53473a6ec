"""A fake Gemini API speaking the REST wire protocol google-genai uses, scriptable per test.

`POST /{version}/models/{model}:streamGenerateContent?alt=sse` answers with
server-sent events (`data: {GenerateContentResponse}`), `:generateContent`
with one JSON body. Errors use Google's error body. The API key header is
checked; every request is recorded, with how much of its stream was sent and whether the
client hung up first. Each chunk reports usageMetadata as Gemini does, covering the call so
far: prompt tokens = the words of the request's texts, output tokens = the chunks sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "fake-gemini-key-for-tests"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass
class Script:
    """What the fake does for one request."""

    chunks: list[str] | None = None  # None: echo the last user message in a few chunks
    delay: float = 0.0  # seconds before each chunk
    status: int | None = None  # answer with this HTTP error instead of a stream
    error_after: int | None = None  # send this many chunks, then an error event (status 503)
    drop_after: int | None = None  # send this many chunks, then cut the connection
    hang: bool = False  # never answer
    hang_after: int | None = None  # send this many chunks, then stall


@dataclass
class GeminiRequest:
    path: str
    model: str
    method: str  # streamGenerateContent | generateContent
    api_key: str | None
    body: dict[str, Any]
    chunks_sent: int = 0
    hung_up: bool = False  # the client closed the stream before its end
    finished: bool = False  # the whole scripted stream was sent

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens(self.body)


def echo_chunks(body: dict[str, Any]) -> list[str]:
    """The default answer: deterministic, in several pieces."""
    contents = body.get("contents") or []
    user_texts = [
        part.get("text", "")
        for content in contents
        if content.get("role") == "user"
        for part in content.get("parts", [])
    ]
    words = f"Echo: {user_texts[-1] if user_texts else ''}".split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a request: the words of all its texts."""
    texts = [
        part.get("text", "")
        for content in [*(body.get("contents") or []), body.get("systemInstruction") or {}]
        for part in content.get("parts", [])
    ]
    return sum(len(text.split()) for text in texts)


@dataclass
class FakeGemini:
    scripts: deque[Script] = field(default_factory=deque)
    requests: list[GeminiRequest] = field(default_factory=list)
    default: Script = field(default_factory=Script)
    _ids: itertools.count = field(default_factory=itertools.count)

    def script(self, *scripts: Script) -> None:
        """The next requests follow these scripts, in order; then `default`."""
        self.scripts.extend(scripts)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{version}/models/{target}", self._handle, methods=["POST"])]
        )

    async def _handle(self, request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        try:
            body = await request.json()
        except ClientDisconnect:  # the client hung up before sending all of its request
            return Response(status_code=499)
        api_key = request.headers.get("x-goog-api-key")
        recorded = GeminiRequest(request.url.path, model, method, api_key, body)
        self.requests.append(recorded)
        if api_key != API_KEY:
            return _error(403, "Method doesn't allow unregistered callers.")
        script = self.scripts.popleft() if self.scripts else self.default
        if script.hang:
            await asyncio.sleep(3600)
        if script.status is not None:
            return _error(script.status, "Scripted failure.")
        chunks = script.chunks if script.chunks is not None else echo_chunks(body)
        response_id = f"fake-response-{next(self._ids)}"
        if method == "generateContent":
            usage = _usage(prompt_tokens(body), len(chunks))
            return JSONResponse(_response("".join(chunks), response_id, model, usage, final=True))
        if method != "streamGenerateContent":
            return _error(404, f"Unknown method {method}.")
        return StreamingResponse(
            self._events(script, chunks, response_id, model, recorded),
            media_type="text/event-stream",
        )

    async def _events(
        self,
        script: Script,
        chunks: list[str],
        response_id: str,
        model: str,
        recorded: GeminiRequest,
    ) -> AsyncIterator[bytes]:
        prompt = prompt_tokens(recorded.body)
        try:
            for index, chunk in enumerate(chunks):
                if index == script.error_after:
                    yield _sse(
                        {
                            "error": {
                                "code": 503,
                                "message": "Scripted mid-stream failure.",
                                "status": "UNAVAILABLE",
                            }
                        }
                    )
                    return
                if index == script.drop_after:
                    raise ConnectionResetError("scripted drop")
                if index == script.hang_after:
                    await asyncio.sleep(3600)
                if script.delay:
                    await asyncio.sleep(script.delay)
                final = index == len(chunks) - 1
                yield _sse(_response(chunk, response_id, model, _usage(prompt, index + 1), final))
                recorded.chunks_sent = index + 1
            recorded.finished = True
        except (asyncio.CancelledError, GeneratorExit):
            recorded.hung_up = True
            raise


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\r\n\r\n".encode()


def _usage(prompt: int, output: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output,
    }


def _response(
    text: str, response_id: str, model: str, usage: dict[str, int], final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if final:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "code": status,
                "message": message,
                "status": _STATUS_NAMES.get(status, "UNKNOWN"),
            }
        },
        status_code=status,
    )
