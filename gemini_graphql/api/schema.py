"""The schema: Query, Mutation and Subscription assembled from per-domain mixins.

Documents are parsed, limited and validated by `api.documents` and executed by
graphql-core (`api.http`, `api.websocket`), so the schema carries no extensions.
"""

from __future__ import annotations

import strawberry

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


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)
