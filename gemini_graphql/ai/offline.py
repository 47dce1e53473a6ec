"""The model used when no GEMINI_API_KEY is set: deterministic, clearly marked, streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gemini_graphql.ai.model import Chunk, Turn

NOTICE = "[offline model: no GEMINI_API_KEY is set, so this is not Gemini] "
CHUNK_DELAY_SECONDS = 0.05  # slow enough to watch the reply stream in


class OfflineModel:
    async def stream(
        self, turns: list[Turn], system_instruction: str | None
    ) -> AsyncIterator[Chunk]:
        said = next((turn.text for turn in reversed(turns) if turn.role == "user"), "")
        continued = turns[-1].text if turns and turns[-1].role == "model" else ""
        reply = f"{NOTICE}You said: \u201c{said[:200]}\u201d. Set GEMINI_API_KEY for real answers."
        remaining = reply[len(continued) :] if reply.startswith(continued) else reply
        words = remaining.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(CHUNK_DELAY_SECONDS)
            yield Chunk(text=word if index == len(words) - 1 else word + " ", response_id="offline")
