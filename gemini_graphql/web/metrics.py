"""/metrics: Prometheus's text format, on the api's own port.

Outside production it answers anyone (dev, tests). In production it is served only with
METRICS_TOKEN set, and only to `Authorization: Bearer <METRICS_TOKEN>` (compared in
constant time); without one it is not there at all (404), and METRICS_PORT serves the same
text on a port of its own (`serve`), which a Service or firewall keeps private.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gemini_graphql.config import Settings
from gemini_graphql.metrics import registry


def metrics_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """The route's endpoint for these settings."""
    token = settings.metrics_token
    expected = f"Bearer {token}".encode() if token else None
    served = expected is not None or not settings.is_production

    async def metrics(request: Request) -> Response:
        if not served:
            return PlainTextResponse("Not Found", status_code=404)
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "Unauthorized", status_code=401, headers={"www-authenticate": "Bearer"}
                )
        return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)

    return metrics
