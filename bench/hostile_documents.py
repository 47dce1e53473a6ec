"""CPU time to refuse hostile documents, next to the time to accept an ordinary one.

Each document is checked afresh (the cache is bypassed, as renamed fragments would defeat
it): parse with the token limit, the budget's linear walk, and (for the ordinary one)
every validation rule.
"""

from __future__ import annotations

import statistics
import time

from graphql import GraphQLSchema

from gemini_graphql.api.schema import build_schema
from gemini_graphql.api.transport.documents import Documents
from gemini_graphql.api.transport.strawberry_seams import graphql_schema

ORDINARY = """
mutation($input: SendMessageInput!) {
  sendMessage(input: $input) {
    message { id chatroomId role content status createdAt }
    reply { id chatroomId role content status error }
    usage { used limit remaining resetsAt }
    errors { code field message }
  }
}"""
ROUNDS = 50


def fragment_chain(levels: int) -> str:
    """`{ ...F0 }` where each fragment spreads the next twice: 2**levels fields expanded."""
    parts = ["{ ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    parts.append(f"fragment F{levels} on Query {{ __typename }}")
    return " ".join(parts)


def cpu_ms(schema: GraphQLSchema, query: str) -> float:
    """Median CPU milliseconds of one uncached check (a new cache each round)."""
    samples = []
    for _ in range(ROUNDS):
        documents = Documents(schema, introspection=False)
        started = time.process_time()
        documents.prepare(query)
        samples.append((time.process_time() - started) * 1000)
    return statistics.median(samples)


def refusal_cpu() -> dict[str, float]:
    schema = graphql_schema(build_schema())
    assert Documents(schema, introspection=False).prepare(ORDINARY).errors == ()
    results = {"ordinary": cpu_ms(schema, ORDINARY)}
    for levels in (20, 40, 60):
        assert Documents(schema, introspection=False).prepare(fragment_chain(levels)).errors, (
            "the chain must be refused"
        )
        results[f"chain {levels}"] = cpu_ms(schema, fragment_chain(levels))
    return results


if __name__ == "__main__":
    for name, value in refusal_cpu().items():
        print(f"{name:10s} {value:6.2f} ms CPU")
