"""The fake Gemini for the benchmarks, served in its own process (`python -m uvicorn
bench.fake_gemini:app`): in the load generator's process it would slow down with the load
and count against the time to first word."""

from __future__ import annotations

from gemini_graphql.testing.fakes.gemini import FakeGemini, Script

CHUNKS = ["Hello ", "there, ", "friend."]

app = FakeGemini(default=Script(chunks=CHUNKS)).app
