"""The schema: Query, Mutation and Subscription assembled from per-domain mixins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaxTokensLimiter, ParserCache, SchemaExtension, ValidationCache
from strawberry.extensions.disable_introspection import DisableIntrospection
from strawberry.types import ExecutionContext

from gemini_graphql.api.documents import CACHE_SIZE, MAX_TOKENS, DocumentLimits
from gemini_graphql.api.errors import apply_error_policy
from gemini_graphql.api.mutations.auth import AuthMutations
from gemini_graphql.api.mutations.billing import BillingMutations
from gemini_graphql.api.mutations.chat import ChatMutations
from gemini_graphql.api.queries.billing import BillingQueries
from gemini_graphql.api.queries.chat import ChatQueries
from gemini_graphql.api.queries.user import UserQueries
from gemini_graphql.api.subscriptions.chat import ChatSubscriptions


@strawberry.type
class Query(UserQueries, ChatQueries, BillingQueries):
    pass


@strawberry.type
class Mutation(AuthMutations, ChatMutations, BillingMutations):
    pass


@strawberry.type
class Subscription(ChatSubscriptions):
    pass


class AppSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Replaces Strawberry's log-everything: code each error, log only the unexpected."""
        context: Any = execution_context.context if execution_context else None
        apply_error_policy(errors, getattr(context, "request_id", None))


def build_schema(*, production: bool) -> strawberry.Schema:
    """The limits here apply to operations over the websocket; HTTP uses `Documents`."""
    # Factories: Strawberry builds fresh extension instances per operation (the caches are shared).
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        DocumentLimits,
        lambda: ParserCache(maxsize=CACHE_SIZE),
        lambda: ValidationCache(maxsize=CACHE_SIZE),
    ]
    if production:
        extensions.append(DisableIntrospection)
    return AppSchema(
        query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions
    )
