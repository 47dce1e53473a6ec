"""Test and bench support, shared by tests/ and bench/: never imported by the service (the
layers contract in pyproject.toml keeps it out).

- `fakes.gemini`, `fakes.stripe`: fake Gemini and Stripe APIs (Starlette apps) for the real
  google-genai and stripe SDKs.
- `processes`: real `gemini-graphql serve` and `worker` processes, and free ports.

Only the package's own dependencies are used (Starlette, stripe, httpx, redis): nothing from
the `test` extra, so bench/ runs without it.
"""
