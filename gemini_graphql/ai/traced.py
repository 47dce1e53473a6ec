"""A ChatModel with a span around each call, for a worker that traces (infra.tracing).

Wrapped only when tracing is on (this imports the OpenTelemetry SDK), so an untraced worker
runs the model as it is. The span
(GenAI conventions) records the model, the "first delta" event, the response id and the
token counts, how the call ended, and never the prompt or the output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gemini_graphql.ai.model import ChatModel, Chunk, ModelError, TokenCounts, Turn
from gemini_graphql.infra.otel import Tracing, failed


class TracedModel:
    def __init__(self, model: ChatModel, tracing: Tracing, *, provider: str, name: str) -> None:
        """`provider` and `name`: gen_ai.provider.name and gen_ai.request.model."""
        self._model = model
        self._tracing = tracing
        self._provider = provider
        self._name = name

    async def stream(
        self, turns: list[Turn], system_instruction: str | None
    ) -> AsyncIterator[Chunk]:
        # Runs at the first read, in the job's context: the span is the job span's child.
        span = self._tracing.model_span(provider=self._provider, model=self._name)
        chunks = self._model.stream(turns, system_instruction)
        pieces = 0
        response_id: str | None = None
        usage: TokenCounts | None = None
        ended = "closed"  # read no further: stopped, timed out or cancelled
        try:
            async for chunk in chunks:
                if chunk.text:
                    if not pieces:
                        span.add_event("first delta")
                    pieces += 1
                response_id = chunk.response_id or response_id
                usage = chunk.usage or usage
                yield chunk
            ended = "complete"
        except ModelError as exc:
            ended = "error"
            span.set_attribute("gemini_graphql.model.retryable", exc.retryable)
            failed(span, exc)
            raise
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()  # as closing this iterator closes the model's (see ChatModel)
            span.set_attribute("gemini_graphql.model.ended", ended)
            span.set_attribute("gemini_graphql.model.deltas", pieces)
            if response_id:
                span.set_attribute("gen_ai.response.id", response_id)
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output)
            span.end()

    async def aclose(self) -> None:
        close = getattr(self._model, "aclose", None)
        if close is not None:
            await close()
