"""The request collection for client teams (issue 16): examples/operations.graphql holds every
operation of the public contract with example variables (examples/variables.json), and
examples/gemini-graphql.postman_collection.json, generated from them by
examples/build_collection.py, is current, valid against schema.graphql and runs against the app.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values

from examples import build_collection as collection
from tests.conftest import GraphQLClient, RecordingSms

ROOT = Path(__file__).resolve().parents[1]
DESIGN = Path(os.environ.get("CONTRACT_DIR", ROOT.parent / "shared" / "design"))
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
CAPTURE = re.compile(r'^capture\("(\w+)", "([\w.]+)"\);$')


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text())


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(collection.OUTPUT.read_text())


def requests_of(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, item) of every request, in running order."""
    return [(folder["name"], item) for folder in document["item"] for item in folder["item"]]


def only_operation(query: str) -> OperationDefinitionNode:
    definitions = parse(query).definitions
    assert len(definitions) == 1 and isinstance(definitions[0], OperationDefinitionNode)
    return definitions[0]


def coercion_errors(
    schema: GraphQLSchema, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> list[str]:
    """What graphql-core says of these variables, as a server would coerce them."""
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
    return [error.message for error in coerced] if isinstance(coerced, list) else []


# --- the operations -------------------------------------------------------------------------


def test_operations_are_named_unique_and_valid(schema: GraphQLSchema) -> None:
    operations = collection.load_operations()
    names = [operation.name.value if operation.name else None for operation in operations]
    assert None not in names, "every operation needs a name"
    assert len(names) == len(set(names)), f"names used twice: {names}"
    errors = validate(schema, parse(collection.OPERATIONS.read_text()))
    assert not errors, "\n".join(error.message for error in errors)


def test_every_operation_has_coercing_example_variables(schema: GraphQLSchema) -> None:
    operations = collection.load_operations()
    variables = collection.load_variables()
    names = {operation.name.value for operation in operations if operation.name}
    assert set(variables) == names, (
        f"variables.json: missing {sorted(names - set(variables))}, "
        f"unknown {sorted(set(variables) - names)}"
    )
    problems = []
    for operation in operations:
        name = operation.name.value if operation.name else "?"
        problems += [f"{name}: {m}" for m in coercion_errors(schema, operation, variables[name])]
        declared = {
            definition.variable.name.value for definition in operation.variable_definitions or ()
        }
        if extra := set(variables[name]) - declared:
            problems.append(f"{name}: variables it does not declare: {sorted(extra)}")
    assert not problems, "\n".join(problems)


def test_every_operation_is_in_an_area() -> None:
    placed = [field for fields in collection.AREAS.values() for field in fields]
    assert len(placed) == len(set(placed)), "a root field in two areas"
    for operation in collection.load_operations():
        collection.area_of(operation)  # raises for a root field in no area


@pytest.fixture(scope="module")
def contract() -> GraphQLSchema:
    path = DESIGN / "contract-v2.graphql"
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"contract not found at {path}")
        pytest.skip(f"contract not found at {path} (set CONTRACT_DIR)")
    return build_schema(path.read_text())


def test_every_contract_root_field_has_an_operation(contract: GraphQLSchema) -> None:
    covered: dict[OperationType, set[str]] = {kind: set() for kind in OperationType}
    for operation in collection.load_operations():
        covered[operation.operation].update(collection.root_fields(operation))
    roots = {
        OperationType.QUERY: contract.query_type,
        OperationType.MUTATION: contract.mutation_type,
        OperationType.SUBSCRIPTION: contract.subscription_type,
    }
    missing = [
        f"{root.name}.{field}"
        for kind, root in roots.items()
        if root is not None
        for field in root.fields
        if field not in covered[kind]
    ]
    assert not missing, f"contract root fields without an operation: {missing}"


# --- the generated collection ---------------------------------------------------------------


def test_committed_collection_is_current() -> None:
    assert collection.OUTPUT.read_bytes() == collection.render().encode(), (
        f"{collection.OUTPUT.relative_to(ROOT)} is stale: run `make collection`"
    )


def test_collection_has_the_v2_1_structure(committed: dict[str, Any]) -> None:
    assert committed["info"]["name"] == "gemini-graphql"
    assert committed["info"]["schema"] == collection.POSTMAN_SCHEMA
    assert [folder["name"] for folder in committed["item"]] == list(collection.AREAS)
    for folder in committed["item"]:
        assert folder["name"] and folder["item"], folder["name"]
        for item in folder["item"]:
            assert isinstance(item["name"], str) and item["name"]
            request = item["request"]
            assert request["method"] == "POST"
            assert request["url"]["raw"] == "{{baseUrl}}/graphql"
            assert request["body"]["mode"] == "graphql"
            assert set(request["body"]["graphql"]) == {"query", "variables"}
            assert isinstance(request["body"]["graphql"]["variables"], str)
    values = {variable["key"]: variable["value"] for variable in committed["variable"]}
    assert values["baseUrl"] == "http://127.0.0.1:8000"
    assert "token" in values


def test_one_request_per_operation(committed: dict[str, Any]) -> None:
    names = [item["name"] for _, item in requests_of(committed)]
    assert sorted(names) == sorted(op.name.value for op in collection.load_operations() if op.name)


def test_every_request_validates_and_its_variables_coerce(
    schema: GraphQLSchema, committed: dict[str, Any]
) -> None:
    problems = []
    for folder, item in requests_of(committed):
        body = item["request"]["body"]["graphql"]
        document = parse(body["query"])
        problems += [f"{item['name']}: {error.message}" for error in validate(schema, document)]
        operation = only_operation(body["query"])
        assert operation.name and operation.name.value == item["name"]
        variables = json.loads(body["variables"])
        problems += [f"{item['name']}: {m}" for m in coercion_errors(schema, operation, variables)]
        is_subscription = operation.operation is OperationType.SUBSCRIPTION
        assert is_subscription == (folder == collection.SUBSCRIPTIONS), item["name"]
        headers = {header["key"]: header["value"] for header in item["request"]["header"]}
        if collection.needs_token(operation):
            assert headers.get("Authorization") == "Bearer {{token}}", item["name"]
        else:
            assert "Authorization" not in headers, item["name"]
    assert not problems, "\n".join(problems)


def test_every_placeholder_is_set_before_it_is_used(committed: dict[str, Any]) -> None:
    """Run in order, each {{variable}} a request uses has a starting value or was captured by
    an earlier request (codes: in dev mode, where SendOtp and ForgotPassword return them)."""
    known = {variable["key"] for variable in committed["variable"] if variable["value"]}
    declared = {variable["key"] for variable in committed["variable"]}
    problems = []
    for _, item in requests_of(committed):
        text = json.dumps(item["request"])
        for name in PLACEHOLDER.findall(text):
            if name not in declared:
                problems.append(f"{item['name']}: {{{{{name}}}}} is no collection variable")
            elif name not in known and name != "token":
                problems.append(f"{item['name']}: {{{{{name}}}}} is not set yet")
        for variable, _ in captures_of(item):
            known.add(variable)
    assert not problems, "\n".join(problems)


def test_verify_otp_keeps_the_token(committed: dict[str, Any]) -> None:
    items = {item["name"]: item for _, item in requests_of(committed)}
    assert ("token", "verifyOtp.accessToken") in captures_of(items["VerifyOtp"])
    assert ("devCode", "sendOtp.devCode") in captures_of(items["SendOtp"])
    assert ("roomId", "createChatroom.chatroom.id") in captures_of(items["CreateChatroom"])
    assert ("replyId", "sendMessage.reply.id") in captures_of(items["SendMessage"])


# --- the collection, run against the app ----------------------------------------------------


def captures_of(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(collection variable, path in `data`) of each capture("...", "...") of its test script."""
    found = []
    for event in item.get("event", []):
        if event["listen"] == "test":
            for line in event["script"]["exec"]:
                if match := CAPTURE.match(line):
                    found.append((match.group(1), match.group(2)))
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    """Postman's {{name}} substitution: unknown names stay as written."""
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)


def capture(values: dict[str, str], data: dict[str, Any], path: str, variable: str) -> None:
    """What the scripts' capture() does: keep the value at `path` unless it is null."""
    value: Any = data
    for key in path.split("."):
        value = None if value is None else value.get(key)
    if value is not None:
        values[variable] = str(value)


RUN = ("Signup", "SendOtp", "VerifyOtp", "Me", "CreateChatroom", "SendMessage", "Chatroom")


async def test_login_room_and_message_run_against_the_app(
    gql: GraphQLClient, sms: RecordingSms, committed: dict[str, Any]
) -> None:
    values = {variable["key"]: variable["value"] for variable in committed["variable"]}
    values["baseUrl"] = str(gql.http.base_url).rstrip("/")
    items = {item["name"]: item for _, item in requests_of(committed)}
    results: dict[str, dict[str, Any]] = {}
    for name in RUN:
        request = items[name]["request"]
        headers = {
            header["key"]: substitute(header["value"], values) for header in request["header"]
        }
        body = request["body"]["graphql"]
        response = await gql.http.request(
            request["method"],
            substitute(request["url"]["raw"], values),
            headers=headers,
            json={
                "query": body["query"],
                "variables": json.loads(substitute(body["variables"], values)),
            },
        )
        assert response.status_code == 200, (name, response.text)
        result = response.json()
        assert "errors" not in result, (name, result)
        (payload,) = result["data"].values()
        assert payload is not None, name
        if isinstance(payload, dict) and "errors" in payload:
            assert payload["errors"] == [], (name, payload)
        for variable, path in captures_of(items[name]):
            capture(values, result["data"], path, variable)
        if name == "SendOtp":
            # No devCode outside dev mode: take the code from the SMS, as a tester would.
            assert result["data"]["sendOtp"]["devCode"] is None
            values["devCode"] = sms.last_code(values["mobileNumber"])
        results[name] = result["data"]
    assert values["token"] == results["VerifyOtp"]["verifyOtp"]["accessToken"]
    assert results["Me"]["me"]["mobileNumber"] == values["mobileNumber"]
    assert values["roomId"] == results["CreateChatroom"]["createChatroom"]["chatroom"]["id"]
    sent = results["SendMessage"]["sendMessage"]
    assert sent["message"]["chatroomId"] == values["roomId"]
    assert (values["messageId"], values["replyId"]) == (sent["message"]["id"], sent["reply"]["id"])
    assert sent["reply"]["status"] == "PENDING"
    messages = results["Chatroom"]["chatroom"]["messages"]["edges"]
    assert [edge["node"]["id"] for edge in messages] == [values["messageId"], values["replyId"]]


# --- GraphiQL's example tabs ----------------------------------------------------------------


def test_committed_example_tabs_are_current() -> None:
    assert collection.TABS_OUTPUT.read_bytes() == collection.render_tabs().encode(), (
        f"{collection.TABS_OUTPUT.relative_to(ROOT)} is stale: run `make collection`"
    )


def test_a_tab_per_operation_that_runs_as_it_opens(schema: GraphQLSchema) -> None:
    """Each tab holds one operation of operations.graphql, in order, valid, with variables
    that coerce and no Postman {{placeholder}} (GraphiQL has none: a captured value reads
    where to copy it from), and a header to complete where the operation needs a token."""
    tabs = json.loads(collection.TABS_OUTPUT.read_text())
    operations = collection.load_operations()
    assert len(tabs) == len(operations)
    problems = []
    for tab, expected in zip(tabs, operations, strict=True):
        operation = only_operation(tab["query"])
        assert operation.name and expected.name
        assert operation.name.value == expected.name.value
        problems += [
            f"{expected.name.value}: {e.message}" for e in validate(schema, parse(tab["query"]))
        ]
        variables = json.loads(tab["variables"]) if tab["variables"] is not None else {}
        problems += [
            f"{expected.name.value}: {m}" for m in coercion_errors(schema, operation, variables)
        ]
        assert "{{" not in json.dumps(tab), expected.name.value
        if collection.needs_token(operation):
            assert json.loads(tab["headers"]) == {
                "Authorization": "Bearer <accessToken from VerifyOtp>"
            }, expected.name.value
        else:
            assert tab["headers"] is None, expected.name.value
    assert not problems, "\n".join(problems)
    by_name = {only_operation(tab["query"]).name.value: tab for tab in tabs}  # type: ignore[union-attr]
    assert (
        json.loads(by_name["VerifyOtp"]["variables"])["input"]["code"] == "<devCode from SendOtp>"
    )
    assert json.loads(by_name["Signup"]["variables"])["input"]["mobileNumber"] == "+14155550123"


def test_build_collection_check_passes() -> None:
    """`python -m examples.build_collection --check` (what CI may run) finds both files current."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.build_collection", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
