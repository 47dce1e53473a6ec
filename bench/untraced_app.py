"""The baseline for "no cost when off": the app as `gemini_graphql.app.asgi` built it before
tracing existed (settings and logging from the environment, then create_app), never calling
the tracing code (infra.tracing) at all. Run by uvicorn in its own process."""

from __future__ import annotations

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.logs import configure_logging

settings = Settings.from_env()
configure_logging(settings)
app = create_app(settings)
