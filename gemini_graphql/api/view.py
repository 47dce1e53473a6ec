"""/graphql over HTTP (GraphQL-over-HTTP spec) and websockets (graphql-transport-ws)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from cross_web import HTTPException
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from gemini_graphql.api.context import Context
from gemini_graphql.config import Settings
from gemini_graphql.errors import Unauthenticated
from gemini_graphql.services import Services
from gemini_graphql.web.cors import origin_allowed

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, schema: Any, settings: Settings) -> None:
        super().__init__(
            schema,
            graphql_ide=None if settings.is_production else "graphiql",
            allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
        )
        self.settings = settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = _refuse_by_headers(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def is_websocket_origin_allowed(self, request: WebSocket, origin: str) -> bool:
        """The CORS rule, for handshakes from pages on other origins (403 otherwise)."""
        return origin_allowed(origin, self.settings)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        services: Services = request.app.state.services
        return Context(services=services, connection=request, request_id=request_id)

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = _negotiate(request.headers.get("accept"))
        return sub_response

    def decode_json(self, data: str | bytes) -> object:
        decoded = super().decode_json(data)
        if not isinstance(decoded, dict | list):
            raise HTTPException(400, "The request body must be a JSON object.")
        return decoded

    async def on_ws_connect(self, context: Context) -> UnsetType:
        """Authenticate the connection_init payload; a bad or missing token closes with 4403."""
        try:
            await context.user()
        except Unauthenticated:
            raise ConnectionRejectionError() from None
        return UNSET

    async def execute_single(self, **kwargs: Any) -> ExecutionResult:  # type: ignore[override]
        try:
            return await super().execute_single(**kwargs)
        except HTTPException as exc:
            if isinstance(exc.__cause__, InvalidOperationTypeError):
                raise HTTPException(405, exc.reason) from exc  # e.g. a mutation over GET
            raise

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if _is_request_error(result):
            del response["data"]  # the spec: no `data` when execution never started
        return response

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        media_type = sub_response.media_type or JSON
        response.headers["content-type"] = f"{media_type}; charset=utf-8"
        # With the new media type the status tells a request error apart (the spec's 400).
        if (
            media_type == GRAPHQL_RESPONSE_JSON
            and isinstance(response_data, dict)
            and "data" not in response_data
        ):
            response.status_code = 400
        return response


def _refuse_by_headers(request: Request) -> Response | None:
    """The spec's 406 (unacceptable Accept) and 415 (POST body not JSON)."""
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            return PlainTextResponse(
                "POST bodies must be application/json.", status_code=415
            )
    accept = request.headers.get("accept")
    if _negotiate(accept) is None and not (request.method == "GET" and "text/html" in accept):
        return PlainTextResponse(
            f"Acceptable response types: {GRAPHQL_RESPONSE_JSON}, {JSON}.", status_code=406
        )
    return None


def _negotiate(accept: str | None) -> str | None:
    """The response media type for an Accept header; None when neither is acceptable."""
    if not accept:
        return JSON
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        candidate = {
            GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
            JSON: JSON,
            "application/*": JSON,
            "*/*": JSON,
        }.get(media.lower())
        if candidate and quality > 0 and (best is None or (quality, -position) > best[:2]):
            best = (quality, -position, candidate)
    return best[2] if best else None


def _is_request_error(result: ExecutionResult) -> bool:
    """Parse, validation or variable errors: nothing was executed."""
    return result.data is None and bool(result.errors) and all(
        not error.path for error in result.errors or ()
    )
