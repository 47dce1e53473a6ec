"""The per-request (or per-websocket) context every resolver receives."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection
from strawberry.types import Info as StrawberryInfo

from gemini_graphql.api.loaders import Loaders
from gemini_graphql.auth.tokens import bearer_token
from gemini_graphql.config import Settings
from gemini_graphql.models import User
from gemini_graphql.services import Services

WS_TOKEN_KEYS = ("authorization", "Authorization", "authToken")


@dataclass(slots=True)
class Context:
    services: Services
    connection: HTTPConnection
    request_id: str
    # Set by Strawberry from the websocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    _user: User | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)

    @classmethod
    def of(cls, connection: HTTPConnection) -> Context:
        """The context of a request or websocket, with the request id the middleware gave it."""
        request_id = connection.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        return cls(
            services=connection.app.state.services, connection=connection, request_id=request_id
        )

    @property
    def settings(self) -> Settings:
        return self.services.resources.settings

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.services.messages)
        return self._loaders

    @property
    def client_ip(self) -> str:
        client = self.connection.client
        return client.host if client else "unknown"

    @property
    def is_websocket(self) -> bool:
        return self.connection.scope["type"] == "websocket"

    def token(self) -> str | None:
        if self.is_websocket:
            params = self.connection_params or {}
            for key in WS_TOKEN_KEYS:
                value = params.get(key)
                if isinstance(value, str):
                    return bearer_token(value)
            return None
        return bearer_token(self.connection.headers.get("authorization"))

    async def user(self) -> User:
        """The authenticated user; raises Unauthenticated (a top-level UNAUTHENTICATED).

        Over a websocket the token is checked again for every operation, so a
        password change ends access on open connections too.
        """
        if self._user is None or self.is_websocket:
            self._user = await self.services.auth.authenticate(self.token())
            self.connection.scope.setdefault("state", {})["user_id"] = str(self._user.id)
        return self._user


Info = StrawberryInfo[Context, None]
