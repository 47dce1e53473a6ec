"""The ASGI entry point uvicorn imports: settings from the environment."""

from gemini_graphql.app import create_app
from gemini_graphql.config import Settings

app = create_app(Settings.from_env())
