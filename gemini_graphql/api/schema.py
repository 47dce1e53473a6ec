"""The schema: Query, Mutation and Subscription assembled from per-domain mixins.

Documents are parsed, limited and validated by `api.transport.documents` and executed on
graphql-core by the transports; Strawberry extensions given here run around that
(`api.transport.extensions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import strawberry
from strawberry.extensions import SchemaExtension

from gemini_graphql.api.mutations.auth import AuthMutations
from gemini_graphql.api.mutations.billing import BillingMutations
from gemini_graphql.api.mutations.chat import ChatMutations
from gemini_graphql.api.queries.billing import BillingQueries
from gemini_graphql.api.queries.chat import ChatQueries
from gemini_graphql.api.queries.user import UserQueries
from gemini_graphql.api.subscriptions.chat import ChatSubscriptions


@strawberry.type(name="Query")
class QueryRoot(UserQueries, ChatQueries, BillingQueries):
    pass


@strawberry.type(name="Mutation")
class MutationRoot(AuthMutations, ChatMutations, BillingMutations):
    pass


@strawberry.type(name="Subscription")
class SubscriptionRoot(ChatSubscriptions):
    pass


Extension = type[SchemaExtension] | Callable[[], SchemaExtension]


def build_schema(extensions: Sequence[Extension] = ()) -> strawberry.Schema:
    """`extensions`: classes or factories, one instance made per operation (Strawberry's way)."""
    return strawberry.Schema(
        query=QueryRoot,
        mutation=MutationRoot,
        subscription=SubscriptionRoot,
        extensions=list(extensions),
    )
