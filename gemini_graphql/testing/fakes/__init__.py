"""Fake Gemini and Stripe servers for tests and benchmarks."""
