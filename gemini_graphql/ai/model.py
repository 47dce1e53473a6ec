"""What the rest of the code needs from a chat model, whichever one it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "model"]
    text: str


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Gemini's usageMetadata: within one call each report covers the call so far."""

    prompt: int = 0
    output: int = 0
    total: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt + other.prompt, self.output + other.output, self.total + other.total
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    response_id: str | None = None
    usage: TokenCounts | None = None  # the call's usage so far, when the model reports it


class ModelError(Exception):
    """The model could not answer. `retryable`: worth another try later (429, 5xx, network)."""

    def __init__(self, message: str, *, retryable: bool, user_message: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.user_message = user_message


class ChatModel(Protocol):
    def stream(self, turns: list[Turn], system_instruction: str | None) -> AsyncIterator[Chunk]:
        """The reply to `turns`, piece by piece. When the last turn is the model's, continue it.

        Closing the iterator early (a stopped reply) must end the call, not drain it."""
        ...


ABANDON_READS = 1000  # chunks already received and skipped while ending a call


async def abandon(chunks: AsyncGenerator[Chunk, None]) -> None:
    """End a model call now, without reading the rest of it (a stopped reply).

    A read cancelled in flight unwinds the SDK's whole chain of generators, which closes the
    HTTP response at once; closing the stream at a yield would leave the inner generators
    (which hold themselves in reference cycles) to the garbage collector, and the
    connection open and still receiving until then. Chunks that had already arrived are
    skipped."""
    try:
        for _ in range(ABANDON_READS):
            try:
                async with asyncio.timeout(0):
                    await anext(chunks)
            except (TimeoutError, StopAsyncIteration, ModelError):
                return
    finally:
        await chunks.aclose()
