"""Build the Postman collection (v2.1) of examples/operations.graphql for client teams, and
the example tabs GraphiQL opens with in dev mode.

    python -m examples.build_collection      (or: make collection)

writes examples/gemini-graphql.postman_collection.json from examples/operations.graphql (the
operations), examples/variables.json (their example variables, by operation name) and
schema.graphql (each request's description), and
gemini_graphql/api/transport/graphiql_assets/example_tabs.json (package data: an installed
wheel has no examples/ to read). Both are committed; tests/test_examples.py fails while
either is stale. `--check` exits 1 instead of writing when a file would change.

Only graphql-core and the standard library: the service never imports this.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    parse,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPERATIONS = HERE / "operations.graphql"
VARIABLES = HERE / "variables.json"
SCHEMA = ROOT / "schema.graphql"
OUTPUT = HERE / "gemini-graphql.postman_collection.json"
TABS_OUTPUT = (
    ROOT / "gemini_graphql" / "api" / "transport" / "graphiql_assets" / "example_tabs.json"
)

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")  # a Postman variable in variables.json
POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
SUBSCRIPTIONS = "Subscriptions (websocket)"

# The collection's folders, in running order, by the root field of each operation. Within a
# folder, requests keep the order of operations.graphql. deleteChatroom comes last of
# Conversation so that a run keeps its room until the end.
AREAS: dict[str, tuple[str, ...]] = {
    "Auth": (
        "signup",
        "sendOtp",
        "verifyOtp",
        "me",
        "loginWithPassword",
        "forgotPassword",
        "resetPassword",
        "changePassword",
    ),
    "Chat": ("createChatroom", "chatrooms", "chatroom", "updateChatroom", "sendMessage"),
    "Conversation": (
        "stopReply",
        "regenerateReply",
        "editMessage",
        "selectVersion",
        "deleteChatroom",
    ),
    "Billing": ("subscriptionStatus", "subscribePro"),
    SUBSCRIPTIONS: ("messageStream", "chatroomEvents"),
}

# Root fields that need no token; every other request sends `Authorization: Bearer {{token}}`.
PUBLIC = frozenset(
    {"signup", "sendOtp", "verifyOtp", "loginWithPassword", "forgotPassword", "resetPassword"}
)

# What a request's test script keeps for the next ones: collection variable <- path in `data`
# (kept only when not null, so a failed request leaves the previous value).
CAPTURES: dict[str, tuple[tuple[str, str], ...]] = {
    "SendOtp": (("devCode", "sendOtp.devCode"),),
    "VerifyOtp": (("token", "verifyOtp.accessToken"),),
    "LoginWithPassword": (("token", "loginWithPassword.accessToken"),),
    "ForgotPassword": (("resetCode", "forgotPassword.devCode"),),
    "ResetPassword": (("token", "resetPassword.accessToken"),),
    "ChangePassword": (("token", "changePassword.accessToken"),),
    "CreateChatroom": (("roomId", "createChatroom.chatroom.id"),),
    "SendMessage": (("messageId", "sendMessage.message.id"), ("replyId", "sendMessage.reply.id")),
}

# The collection's variables, with their starting values.
COLLECTION_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("baseUrl", "http://127.0.0.1:8000", "Where the service runs (`make dev`)."),
    ("token", "", "The access token: set by VerifyOtp (and the other logins)."),
    ("mobileNumber", "+14155550123", "The account the Auth requests sign up and log in."),
    ("password", "correct horse battery staple", "Its password (8 to 128 characters)."),
    ("devCode", "", "The LOGIN code: set by SendOtp from devCode (dev mode only)."),
    ("resetCode", "", "The PASSWORD_RESET code: set by ForgotPassword (dev mode only)."),
    ("roomId", "", "Set by CreateChatroom."),
    ("messageId", "", "The USER message: set by SendMessage."),
    ("replyId", "", "The ASSISTANT reply: set by SendMessage."),
)

CAPTURE_HELPER = (
    "function capture(name, path) {",
    "  let value = pm.response.json().data;",
    '  for (const key of path.split(".")) value = value == null ? null : value[key];',
    "  if (value != null) pm.collectionVariables.set(name, value);",
    "}",
)
NO_TOP_LEVEL_ERRORS = (
    'pm.test("no top-level GraphQL errors", function () {',
    "  pm.expect(pm.response.json().errors).to.be.undefined;",
    "});",
)

DESCRIPTION = """\
Every operation of gemini-graphql's public contract, one request each, generated from \
examples/operations.graphql by examples/build_collection.py (do not edit by hand).

Start the service with `make dev`, then run the folders in order: Auth signs up \
{{mobileNumber}}, sends a code (dev mode returns it as devCode) and logs in with it, keeping \
the access token in {{token}}; Chat creates a room and sends a message (keeping {{roomId}}, \
{{messageId}}, {{replyId}}); Conversation stops, regenerates, edits and finally deletes; \
Billing needs Stripe configured (else PAYMENTS_UNAVAILABLE comes back as a payload error).

Expected failures come back as data: each payload's `errors` list (code, field, message), \
with HTTP 200. Subscriptions need a websocket client: see their folder.

Running it again right away can meet RATE_LIMITED (codes per number are throttled: wait the \
retryAfter seconds) and, after a few runs a day, DAILY_LIMIT_REACHED (BASIC's daily messages); \
set {{mobileNumber}} to another number for a fresh account."""

FOLDER_DESCRIPTIONS = {
    "Auth": "Sign up, log in with a one-time code or a password, reset and change the password.",
    "Chat": "Chatrooms, and sending a message (the reply streams over messageStream).",
    "Conversation": (
        "Stop, regenerate or edit, pick a version; deleteChatroom last (it ends the run's room)."
    ),
    "Billing": "The plan, and buying Pro through Stripe Checkout.",
    SUBSCRIPTIONS: (
        "For reference only: Postman's HTTP requests cannot run subscriptions. Use a "
        "graphql-transport-ws client on ws://127.0.0.1:8000/graphql (GraphiQL at "
        "{{baseUrl}}/graphql is one), sending the token in the connection_init payload as "
        '{"authorization": "Bearer <accessToken>"}. Each request here holds the document and '
        "its variables to copy."
    ),
}


def load_operations(text: str | None = None) -> list[OperationDefinitionNode]:
    """The operations of operations.graphql, in order."""
    document: DocumentNode = parse(OPERATIONS.read_text() if text is None else text)
    return [node for node in document.definitions if isinstance(node, OperationDefinitionNode)]


def load_variables() -> dict[str, dict]:
    return json.loads(VARIABLES.read_text())


def root_fields(operation: OperationDefinitionNode) -> list[str]:
    return [
        selection.name.value
        for selection in operation.selection_set.selections
        if isinstance(selection, FieldNode)
    ]


def area_of(operation: OperationDefinitionNode) -> str:
    first = root_fields(operation)[0]
    for area, fields in AREAS.items():
        if first in fields:
            return area
    raise ValueError(f"{operation.name.value}: root field {first} is in no area of AREAS")


def source_of(operation: OperationDefinitionNode) -> str:
    assert operation.loc is not None
    return operation.loc.source.body[operation.loc.start : operation.loc.end]


def needs_token(operation: OperationDefinitionNode) -> bool:
    return any(name not in PUBLIC for name in root_fields(operation))


def field_description(schema: GraphQLSchema, operation: OperationDefinitionNode) -> str:
    root = {
        OperationType.QUERY: schema.query_type,
        OperationType.MUTATION: schema.mutation_type,
        OperationType.SUBSCRIPTION: schema.subscription_type,
    }[operation.operation]
    assert root is not None
    lines = []
    for name in root_fields(operation):
        description = root.fields[name].description
        lines.append(f"`{name}`: {description}" if description else f"`{name}`")
    return "\n\n".join(lines)


def script_of(name: str, subscription: bool) -> list[dict]:
    if subscription:
        return []
    lines = list(NO_TOP_LEVEL_ERRORS)
    captures = CAPTURES.get(name, ())
    if captures:
        lines += CAPTURE_HELPER
        lines += [f'capture("{variable}", "{path}");' for variable, path in captures]
    return [{"listen": "test", "script": {"type": "text/javascript", "exec": lines}}]


def request_item(
    schema: GraphQLSchema, operation: OperationDefinitionNode, variables: dict
) -> dict:
    name = operation.name.value
    subscription = operation.operation is OperationType.SUBSCRIPTION
    header = [{"key": "Content-Type", "value": "application/json"}]
    description = field_description(schema, operation)
    if needs_token(operation):
        header.append({"key": "Authorization", "value": "Bearer {{token}}"})
    else:
        description += "\n\nNo token needed."
    if subscription:
        description += (
            "\n\nA subscription: run it with a graphql-transport-ws client, not this request."
        )
    return {
        "name": name,
        "event": script_of(name, subscription),
        "request": {
            "method": "POST",
            "header": header,
            "body": {
                "mode": "graphql",
                "graphql": {
                    "query": source_of(operation),
                    "variables": json.dumps(variables, indent=2, ensure_ascii=False),
                },
            },
            "url": {"raw": "{{baseUrl}}/graphql", "host": ["{{baseUrl}}"], "path": ["graphql"]},
            "description": description,
        },
        "response": [],
    }


def build_collection() -> dict:
    schema = build_schema(SCHEMA.read_text())
    operations = load_operations()
    variables = load_variables()
    folders: dict[str, list[dict]] = {area: [] for area in AREAS}
    for operation in operations:
        if operation.name is None:
            raise ValueError(f"an operation without a name:\n{source_of(operation)}")
        name = operation.name.value
        if name not in variables:
            raise ValueError(f"{name}: no example variables in {VARIABLES.name}")
        folders[area_of(operation)].append(request_item(schema, operation, variables[name]))
    return {
        "info": {
            "name": "gemini-graphql",
            "description": DESCRIPTION,
            "schema": POSTMAN_SCHEMA,
        },
        "item": [
            {"name": area, "description": FOLDER_DESCRIPTIONS[area], "item": items}
            for area, items in folders.items()
            if items
        ],
        "variable": [
            {"key": key, "value": value, "type": "string", "description": description}
            for key, value, description in COLLECTION_VARIABLES
        ],
    }


def render() -> str:
    """The collection file's exact text."""
    return json.dumps(build_collection(), indent=2, ensure_ascii=False) + "\n"


# --- GraphiQL's example tabs ------------------------------------------------------------------


def tab_values() -> dict[str, str]:
    """What each {{variable}} reads in a GraphiQL tab, which has no collection variables: a
    starting value as is, and for a captured one where to copy it from, e.g. "<devCode from
    SendOtp>" (the first request that captures it)."""
    values = {key: value for key, value, _ in COLLECTION_VARIABLES if value}
    for name, captures in CAPTURES.items():
        for variable, path in captures:
            values.setdefault(variable, f"<{path.split('.', 1)[1]} from {name}>")
    return values


def filled_in(value: Any, values: dict[str, str]) -> Any:
    """`value` with each {{variable}} in its strings replaced by values[variable]."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], value)
    if isinstance(value, dict):
        return {key: filled_in(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [filled_in(item, values) for item in value]
    return value


def build_tabs() -> list[dict[str, str | None]]:
    """GraphiQL's `defaultTabs`: one tab per operation, in the order of operations.graphql
    (GraphiQL titles each with its operation's name), with its example variables and, for
    the operations that need one, an Authorization header to complete."""
    values = tab_values()
    variables = load_variables()
    token_header = json.dumps({"Authorization": f"Bearer {values['token']}"})
    tabs: list[dict[str, str | None]] = []
    for operation in load_operations():
        assert operation.name is not None  # build_collection refuses nameless operations
        example = filled_in(variables[operation.name.value], values)
        tabs.append(
            {
                "query": source_of(operation),
                "variables": json.dumps(example, indent=2, ensure_ascii=False) if example else None,
                "headers": token_header if needs_token(operation) else None,
            }
        )
    return tabs


def render_tabs() -> str:
    """example_tabs.json's exact text."""
    return json.dumps(build_tabs(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stale = 0
    for output, text in ((OUTPUT, render()), (TABS_OUTPUT, render_tabs())):
        current = output.read_text() if output.is_file() else None
        name = output.relative_to(ROOT)
        if "--check" in args:
            if current != text:
                print(f"{name} is stale: run `make collection`", file=sys.stderr)
                stale = 1
        elif current != text:
            output.write_text(text)
            print(f"wrote {name}")
        else:
            print(f"{name} is up to date")
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
