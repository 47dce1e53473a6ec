"""Google Gemini through the official google-genai SDK, streaming."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
from google import genai
from google.genai import errors, types

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


class GeminiModel:
    def __init__(self, settings: Settings) -> None:
        assert settings.gemini_api_key, "GeminiModel needs GEMINI_API_KEY"
        self._model = settings.gemini_model
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

    async def stream(
        self, turns: list[Turn], system_instruction: str | None
    ) -> AsyncIterator[Chunk]:
        # Plain dicts, which the SDK accepts as they are: building its pydantic models first
        # doubled the time to the first chunk for a ten-message context.
        contents: list[types.ContentDict] = [
            {"role": turn.role, "parts": [{"text": turn.text}]} for turn in turns
        ]
        config: types.GenerateContentConfigDict = {}
        if system_instruction:
            config["system_instruction"] = system_instruction
        response = None
        started = time.perf_counter()
        try:
            response = await self._client.aio.models.generate_content_stream(
                model=self._model, contents=contents, config=config
            )
            async for piece in response:
                text = piece.text or ""
                usage = _usage(piece.usage_metadata)
                if text or usage is not None:
                    yield Chunk(text=text, response_id=piece.response_id, usage=usage)
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
            if response is not None:  # a stopped reply: end the call now, do not drain it
                await response.aclose()

    async def aclose(self) -> None:
        await self._client.aio.aclose()


_UNAVAILABLE = "The assistant is unavailable right now. Please try again in a few minutes."


def _count_error(status: str) -> None:
    MODEL_ERRORS.labels(status if len(status) <= 16 else "unknown").inc()


def _usage(metadata: types.GenerateContentResponseUsageMetadata | None) -> TokenCounts | None:
    if metadata is None or metadata.total_token_count is None:
        return None
    return TokenCounts(
        prompt=metadata.prompt_token_count or 0,
        output=metadata.candidates_token_count or 0,
        total=metadata.total_token_count,
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
