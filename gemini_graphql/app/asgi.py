"""The ASGI entry point uvicorn imports: settings, and tracing, from the environment."""

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.infra.tracing import API_SERVICE, from_env
from gemini_graphql.logs import configure_logging

settings = Settings.from_env()
configure_logging(settings)  # also in uvicorn's worker processes (--workers N)
# Each uvicorn worker process sets up its own tracer provider (and export thread).
app = create_app(settings, tracing=from_env(service=API_SERVICE))
