"""CORS for browsers, on the rule `Settings.allows_origin` states (the websocket applies it too)."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gemini_graphql.config import LOCALHOST_ORIGIN, Settings


def cors_middleware(settings: Settings) -> Middleware:
    return Middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_origin_regex=LOCALHOST_ORIGIN if settings.is_dev else None,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
        allow_credentials=settings.cors_allow_credentials,
        max_age=600,
    )
