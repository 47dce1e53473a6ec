"""/graphql over websockets (graphql-transport-ws), and the GraphiQL page outside production.

Plain HTTP requests are served by `api.http`, which executes without Strawberry's view.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from gemini_graphql.api.context import Context
from gemini_graphql.config import Settings
from gemini_graphql.errors import Unauthenticated
from gemini_graphql.services import Services
from gemini_graphql.web.cors import origin_allowed

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

    def is_websocket_origin_allowed(self, request: WebSocket, origin: str) -> bool:
        """The CORS rule, for handshakes from pages on other origins (403 otherwise)."""
        return origin_allowed(origin, self.settings)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        services: Services = request.app.state.services
        return Context(services=services, connection=request, request_id=request_id)

    async def on_ws_connect(self, context: Context) -> UnsetType:
        """Authenticate the connection_init payload; a bad or missing token closes with 4403."""
        try:
            await context.user()
        except Unauthenticated:
            raise ConnectionRejectionError() from None
        return UNSET
