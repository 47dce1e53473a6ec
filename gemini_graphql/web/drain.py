"""Whether this api process is draining: told to stop, still serving, no longer ready.

The server (web/server.py) puts one Drain in the ASGI lifespan state, which uvicorn copies
into every request's scope; /health/ready reads it from there. An app run without it (tests
through ASGI, `dev`) never drains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATE_KEY = "gemini_graphql.drain"


class Drain:
    """Set once, on the first SIGTERM or SIGINT; never cleared (the process is on its way out)."""

    def __init__(self) -> None:
        self.draining = False

    def start(self) -> None:
        self.draining = True


def is_draining(state: Mapping[str, Any]) -> bool:
    """Whether the request whose scope["state"] this is came to a draining process."""
    drain = state.get(STATE_KEY)
    return isinstance(drain, Drain) and drain.draining
