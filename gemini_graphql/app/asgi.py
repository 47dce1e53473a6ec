"""The ASGI entry point uvicorn imports: settings from the environment."""

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.logs import configure_logging

settings = Settings.from_env()
configure_logging(settings)  # also in uvicorn's worker processes (--workers N)
app = create_app(settings)
