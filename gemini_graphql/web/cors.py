"""Which browser origins may call the API: one rule for CORS and for websocket handshakes."""

from __future__ import annotations

import re

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gemini_graphql.config import Settings

# In dev, any page served from this machine may call the API.
LOCALHOST_ORIGIN = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


def origin_allowed(origin: str, settings: Settings) -> bool:
    if "*" in settings.cors_origins or origin in settings.cors_origins:
        return True
    return settings.is_dev and re.fullmatch(LOCALHOST_ORIGIN, origin) is not None


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
