"""Google Gemini through the official google-genai SDK, streaming.

Through the SDK's HTTP client, not its models layer: `generate_content_stream` validates our
plain dicts into pydantic models, converts them back field by field, serialises the result,
then for every chunk parses the JSON, dumps it and parses it again into a pydantic response,
which its function-calling and continuation wrappers copy. That was about three quarters of
the CPU of a call (11-turn context, 3 chunks: 4.1 ms, now 1.0 ms; 30 chunks: 9.2 ms, now
1.3 ms), some 40% of a reply's CPU in the worker, to send text turns and read back text,
usage and a response id. So the body is built here, as the dicts that layer makes for these
inputs (the same bytes on the wire: the SDK still serialises it), and each event is parsed
once. The SDK keeps the client and its http_options (key, base URL, API version, timeout,
retry options), the headers, sending, reading the event stream and raising its errors.

Private parts of google-genai this relies on: `Client.aio._api_client`, its `_build_request`
and `_async_request` (what `async_request_streamed` calls; its per-event check for an error
event is copied in `_event`), `HttpResponse._aiter_response_stream` and
`_transformers.t_model`. tests/test_gemini_sdk.py holds all of it to what
`generate_content_stream` sends and yields, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson
from google import genai
from google.genai import _transformers, errors, types

from gemini_graphql.ai.model import Chunk, ModelError, TokenCounts, Turn
from gemini_graphql.config import Settings
from gemini_graphql.metrics import MODEL_CALL_DURATION, MODEL_ERRORS

try:  # google-genai may use httpx2, a fork with its own exception classes
    import httpx2

    _NETWORK_ERRORS: tuple[type[BaseException], ...] = (
        httpx.TransportError,
        httpx2.TransportError,
        OSError,
    )
except ImportError:  # pragma: no cover - depends on the installed SDK
    _NETWORK_ERRORS = (httpx.TransportError, OSError)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A response cut at the per-request token limit ends with this and a continuationToken.
_CONTINUATION = "CONTINUATION"
_COUNTS = ("promptTokenCount", "candidatesTokenCount", "totalTokenCount")


class GeminiModel:
    def __init__(self, settings: Settings) -> None:
        assert settings.gemini_api_key, "GeminiModel needs GEMINI_API_KEY"
        self._client = genai.Client(
            api_key=settings.gemini_api_key,
            http_options=types.HttpOptions(
                base_url=settings.gemini_base_url,
                api_version=settings.gemini_api_version,  # pinned: the wire format we test against
                timeout=int(settings.gemini_timeout_seconds * 1000),  # per connect/read
                # Retries are the worker's job (arq Retry with backoff), not the SDK's.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self._api = self._client.aio._api_client
        # "models/<name>" as the SDK's models layer forms it (t_model also rejects bad names).
        model_path = _transformers.t_model(self._api, settings.gemini_model)
        self._path = f"{model_path}:streamGenerateContent?alt=sse"

    async def stream(
        self, turns: list[Turn], system_instruction: str | None
    ) -> AsyncIterator[Chunk]:
        body = _request_body(turns, system_instruction)
        lines: AsyncGenerator[str, None] | None = None
        started = time.perf_counter()
        try:
            earlier: dict[str, Any] = {}  # usage of the calls before this one (continuation)
            start: str | None = None  # the continuationToken this call resumes from
            while True:
                request = self._api._build_request("post", self._path, body, None)
                response = await self._api._async_request(request, None, stream=True)
                lines = response._aiter_response_stream()  # each event's JSON text
                usage: dict[str, Any] | None = None
                finish: str | None = None
                token: str | None = None
                feedback = False
                async for line in lines:
                    piece = await _event(line, response)
                    if not isinstance(piece, dict):
                        continue
                    candidates = piece.get("candidates")
                    candidate = candidates[0] if candidates else {}
                    finish = candidate.get("finishReason") or finish
                    token = candidate.get("continuationToken") or (
                        token if finish in (None, _CONTINUATION) else None
                    )
                    feedback = feedback or piece.get("promptFeedback") is not None
                    text = _text(candidate)
                    counts = None
                    if (metadata := piece.get("usageMetadata")) is not None:
                        usage = _merged(earlier, metadata)
                        counts = _usage(usage)
                    if text or counts is not None:
                        yield Chunk(text=text, response_id=piece.get("responseId"), usage=counts)
                # Continued with its token, as the SDK's automatic_continuation does (a call
                # that fails is not resumed from its last token: the worker retries the reply).
                if finish not in (None, _CONTINUATION) or feedback or not token:
                    return
                token = _urlsafe_base64(token)
                if token == start:
                    return
                await lines.aclose()
                earlier, start = usage or earlier, token
                body = _continued(body, token)
        except errors.APIError as exc:
            _count_error(str(exc.code or "unknown"))
            raise _api_error(exc) from exc
        except TimeoutError as exc:
            _count_error("timeout")
            raise ModelError("Gemini timed out", retryable=True, user_message=_UNAVAILABLE) from exc
        except _NETWORK_ERRORS as exc:
            _count_error("network")
            raise ModelError(
                f"network error talking to Gemini: {type(exc).__name__}",
                retryable=True,
                user_message=_UNAVAILABLE,
            ) from exc
        finally:
            MODEL_CALL_DURATION.observe(time.perf_counter() - started)
            if lines is not None:  # a stopped reply: end the call now, do not drain it
                await lines.aclose()  # (its `finally` closes the HTTP response)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def _request_body(turns: list[Turn], system_instruction: str | None) -> dict[str, Any]:
    """What the SDK's models layer sends for these turns, key for key and in its order."""
    body: dict[str, Any] = {
        "contents": [{"parts": [{"text": turn.text}], "role": turn.role} for turn in turns]
    }
    if system_instruction:
        body["systemInstruction"] = {"parts": [{"text": system_instruction}], "role": "user"}
        body["generationConfig"] = {}  # the SDK's for a config with only system_instruction
    return body


def _continued(body: dict[str, Any], token: str) -> dict[str, Any]:
    """The next call of a response that ended with a continuationToken, as the SDK sends it."""
    following = {key: value for key, value in body.items() if key != "generationConfig"}
    following["continuationToken"] = token
    following["generationConfig"] = {}
    return following


async def _event(line: str, response: Any) -> Any:
    """One event of the stream, parsed and checked as `async_request_streamed` does."""
    try:
        piece = orjson.loads(line)
    except orjson.JSONDecodeError:  # what json reads and orjson does not, or the SDK's error
        piece = response._load_json_from_response(line)
    if type(piece) is dict and next(iter(piece), None) == "error":  # its '{"error":' test
        await errors.APIError.raise_error_async(piece["error"].get("code"), piece, response)
    return piece


def _urlsafe_base64(token: str) -> str:
    """A token (bytes, in base64) as the SDK sends it back: decoded, then in URL-safe base64."""
    padded = token.replace("+", "-").replace("/", "_") + "=" * (-len(token) % 4)
    return base64.urlsafe_b64encode(base64.urlsafe_b64decode(padded)).decode("ascii")


def _text(candidate: dict[str, Any]) -> str:
    """GenerateContentResponse.text: the first candidate's text parts, without thoughts."""
    content = candidate.get("content")
    parts = content.get("parts") if content else None
    if not parts:
        return ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part.get("text"), str) and part.get("thought") is not True
    )


def _merged(earlier: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """A continued response's usage so far: the earlier calls' plus this one's, summed."""
    if not earlier:
        return metadata
    merged = {}
    for key in _COUNTS:
        before, now = earlier.get(key), metadata.get(key)
        merged[key] = now if before is None else before if now is None else before + now
    return merged


_UNAVAILABLE = "The assistant is unavailable right now. Please try again in a few minutes."


def _count_error(status: str) -> None:
    MODEL_ERRORS.labels(status if len(status) <= 16 else "unknown").inc()


def _usage(metadata: dict[str, Any] | None) -> TokenCounts | None:
    if metadata is None or metadata.get("totalTokenCount") is None:
        return None
    return TokenCounts(
        prompt=metadata.get("promptTokenCount") or 0,
        output=metadata.get("candidatesTokenCount") or 0,
        total=metadata["totalTokenCount"],
    )


def _api_error(exc: errors.APIError) -> ModelError:
    code = exc.code or 0
    if code in RETRYABLE_STATUS:
        return ModelError(f"Gemini answered {code}", retryable=True, user_message=_UNAVAILABLE)
    return ModelError(
        f"Gemini refused the request ({code} {exc.status})",
        retryable=False,
        user_message="The assistant could not answer this message.",
    )
