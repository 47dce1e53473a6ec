"""schema.graphql is the code's schema, and it honours the public contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    is_non_null_type,
    print_ast,
)

from gemini_graphql.api.schema import build_schema as build_app_schema

ROOT = Path(__file__).resolve().parents[1]
DESIGN = Path(os.environ.get("CONTRACT_DIR", ROOT.parent / "shared" / "design"))
# Version 2 is what is built; version 1, its subset, stays covered on its own too.
CONTRACTS = ("contract-v2.graphql", "contract.graphql")

# Parts of the contract whose capability has not been built yet: absent, not faked.
PENDING_TYPES: set[str] = set()
PENDING_FIELDS: set[str] = set()


def test_committed_schema_file_is_the_code_schema() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == build_app_schema().as_str() + "\n", (
        "schema.graphql is stale: run `gemini-graphql export-schema`"
    )


@pytest.fixture(scope="module", params=CONTRACTS)
def contract(request: pytest.FixtureRequest) -> GraphQLSchema:
    path = DESIGN / request.param
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"contract not found at {path}")
        pytest.skip(f"contract not found at {path} (set CONTRACT_DIR)")
    return build_schema(path.read_text())


@pytest.fixture(scope="module")
def ours() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text())


def contract_types(contract: GraphQLSchema) -> list[str]:
    return sorted(
        name
        for name in contract.type_map
        if not name.startswith("__") and name not in PENDING_TYPES
    )


def test_pending_parts_are_really_absent(ours: GraphQLSchema) -> None:
    """What is not built must not pretend to work: it is simply not in the schema."""
    assert not PENDING_TYPES & set(ours.type_map)
    for path in PENDING_FIELDS:
        type_name, field = path.split(".")
        assert field not in ours.type_map[type_name].fields  # type: ignore[union-attr]


def test_contract_is_covered(contract: GraphQLSchema, ours: GraphQLSchema) -> None:
    problems: list[str] = []
    for name in contract_types(contract):
        theirs, mine = contract.type_map[name], ours.type_map.get(name)
        if mine is None:
            problems.append(f"missing type {name}")
            continue
        if type(theirs) is not type(mine):
            problems.append(
                f"{name}: is {type(mine).__name__}, contract has {type(theirs).__name__}"
            )
            continue
        if isinstance(theirs, GraphQLEnumType):
            missing = set(theirs.values) - set(mine.values)  # type: ignore[union-attr]
            problems += [f"enum {name} lacks {value}" for value in sorted(missing)]
        elif isinstance(theirs, GraphQLObjectType):
            problems += _compare_object(name, theirs, mine)  # type: ignore[arg-type]
        elif isinstance(theirs, GraphQLInputObjectType):
            problems += _compare_input(name, theirs, mine)  # type: ignore[arg-type]
    assert problems == []


def _compare_object(name: str, theirs: GraphQLObjectType, mine: GraphQLObjectType) -> list[str]:
    problems = []
    for field_name, field in theirs.fields.items():
        if f"{name}.{field_name}" in PENDING_FIELDS:
            continue
        own = mine.fields.get(field_name)
        if own is None:
            problems.append(f"missing field {name}.{field_name}")
            continue
        if str(own.type) != str(field.type):
            problems.append(f"{name}.{field_name}: {own.type}, contract {field.type}")
        for arg_name, arg in field.args.items():
            own_arg = own.args.get(arg_name)
            if own_arg is None:
                problems.append(f"missing argument {name}.{field_name}({arg_name})")
            elif str(own_arg.type) != str(arg.type) or _default(own_arg) != _default(arg):
                problems.append(f"argument {name}.{field_name}({arg_name}) differs")
        for arg_name, own_arg in own.args.items():
            if (
                arg_name not in field.args
                and is_non_null_type(own_arg.type)
                and _default(own_arg) is None
            ):
                problems.append(f"extra required argument {name}.{field_name}({arg_name})")
    return problems


def _compare_input(
    name: str, theirs: GraphQLInputObjectType, mine: GraphQLInputObjectType
) -> list[str]:
    problems = []
    for field_name, field in theirs.fields.items():
        own = mine.fields.get(field_name)
        if own is None:
            problems.append(f"missing input field {name}.{field_name}")
        elif str(own.type) != str(field.type):
            problems.append(f"{name}.{field_name}: {own.type}, contract {field.type}")
        elif _default(field) is not None and _default(own) != _default(field):
            problems.append(f"{name}.{field_name}: default differs")
    for field_name, own in mine.fields.items():
        if field_name not in theirs.fields and is_non_null_type(own.type) and _default(own) is None:
            problems.append(f"extra required input field {name}.{field_name}")
    return problems


def _default(arg: GraphQLArgument | GraphQLInputField) -> str | None:
    """The default as written in the SDL (build_schema keeps it only on the AST node).

    `= null` on a nullable argument means the same as no default.
    """
    node = arg.ast_node
    if node is None or node.default_value is None:
        return None
    printed = print_ast(node.default_value)
    return None if printed == "null" else printed
