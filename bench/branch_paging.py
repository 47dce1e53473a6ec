"""6. Branch paging: `messages(last: 20)` on a room of 2,000 messages with 20 branches
against a linear room of the same length, through the HTTP API at 8 connections.

Both rooms are seeded straight into PostgreSQL, ids made by `new_id()` in creation order
(a child always after its parent, as the service makes them):
- linear: 2,000 messages, user and assistant in turn, each the child of the one before;
- branched: a trunk of 1,240 messages (the current branch: the page walks from its deep
  leaf) and 19 side branches of 40 messages forking off it at depths spread from 40 to
  1,192, each created right after the trunk message it is a version of (so the trunk's ids
  are not contiguous: the side branches' ids lie between them), each ending in a leaf.
Every message's content has the same length in both rooms: the pages weigh the same.

The two rooms are loaded in alternating rounds (wrk, one connection count, the order
flipped every round) because the machine is shared and noisy; a round also loads the page
before the first one (`before:` the cursor of the first edge). Before the load each page
is checked against the ids it must hold. A figure is the median over the rounds (req/s: the
mean); the ratio branched/linear is the median of the rounds' ratios of p50.
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import uvloop

from bench.stack import Stack, running_stack
from bench.wrk import Load, run_wrk
from gemini_graphql.ids import new_id

TOTAL = 2_000
BRANCHES = 20  # the trunk and 19 side branches
SIDE_LENGTH = 40
TRUNK = TOTAL - (BRANCHES - 1) * SIDE_LENGTH  # 1,240
PAGE = 20
CONNECTIONS = 8
SECONDS = 1  # per load
ROUNDS = 6  # each: linear and branched, last and before (4 loads)
CONTENT_LENGTH = 160
WARM_UP = 20  # requests per page before the load

LAST = "query($id: ID!) { chatroom(id: $id) { messages(last: 20) { edges { cursor node { id content } } } } }"
BEFORE = "query($id: ID!, $c: String!) { chatroom(id: $id) { messages(last: 20, before: $c) { edges { node { id content } } } } }"

COLUMNS = (
    "id",
    "chatroom_id",
    "role",
    "parent_id",
    "content",
    "status",
    "created_at",
    "updated_at",
)


@dataclass
class Room:
    id: uuid.UUID
    branch: list[uuid.UUID]  # the current branch, oldest first
    messages: int
    leaves: int


class Seeder:
    """Message rows in creation order, with increasing created_at."""

    def __init__(self, room_id: uuid.UUID) -> None:
        self.room_id = room_id
        self.rows: list[tuple] = []
        self._start = datetime.now(UTC) - timedelta(days=1)

    def add(self, parent: uuid.UUID | None, role: str) -> uuid.UUID:
        message_id = new_id()
        at = self._start + timedelta(seconds=len(self.rows))
        text = f"{role} message {len(self.rows):05d} "
        content = (text * (CONTENT_LENGTH // len(text) + 1))[:CONTENT_LENGTH]
        self.rows.append((message_id, self.room_id, role, parent, content, "complete", at, at))
        return message_id


def _role(depth: int) -> str:
    return "user" if depth % 2 == 0 else "assistant"


def linear_rows(room_id: uuid.UUID) -> tuple[Seeder, list[uuid.UUID]]:
    seeder = Seeder(room_id)
    branch: list[uuid.UUID] = []
    for depth in range(TOTAL):
        branch.append(seeder.add(branch[-1] if branch else None, _role(depth)))
    return seeder, branch


def branched_rows(room_id: uuid.UUID) -> tuple[Seeder, list[uuid.UUID]]:
    seeder = Seeder(room_id)
    # A side branch starts as a version of the trunk message at `depth` (an edited question
    # or, at odd depths, a regenerated answer), right after that trunk message was made.
    step = (TRUNK - 2 * SIDE_LENGTH) // (BRANCHES - 2)
    forks = {SIDE_LENGTH + i * step + (i % 2) for i in range(BRANCHES - 1)}
    assert len(forks) == BRANCHES - 1 and max(forks) < TRUNK
    trunk: list[uuid.UUID] = []
    for depth in range(TRUNK):
        trunk.append(seeder.add(trunk[-1] if trunk else None, _role(depth)))
        if depth in forks:
            parent = trunk[depth - 1]
            for offset in range(SIDE_LENGTH):
                parent = seeder.add(parent, _role(depth + offset))
    assert len(seeder.rows) == TOTAL
    return seeder, trunk


async def seed(stack: Stack) -> tuple[Room, Room]:
    """The linear room and the branched one, for the stack's user."""
    conn = await asyncpg.connect(stack.dsn)
    try:
        rooms = []
        for title, build in (("linear", linear_rows), ("branched", branched_rows)):
            room_id = new_id()
            seeder, branch = build(room_id)
            now = datetime.now(UTC)
            await conn.execute(
                "INSERT INTO chatrooms (id, user_id, title, current_leaf_id, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $5)",
                room_id,
                uuid.UUID(stack.user_id),
                f"paging {title}",
                branch[-1],
                now,
            )
            await conn.copy_records_to_table("messages", records=seeder.rows, columns=COLUMNS)
            parents = {row[3] for row in seeder.rows}
            leaves = sum(1 for row in seeder.rows if row[0] not in parents)
            rooms.append(Room(room_id, branch, len(seeder.rows), leaves))
        await conn.execute("ANALYZE messages")
        await conn.execute("ANALYZE chatrooms")
    finally:
        await conn.close()
    linear, branched = rooms
    assert linear.leaves == 1 and branched.leaves == BRANCHES, (linear.leaves, branched.leaves)
    return linear, branched


async def _page(stack: Stack, http: httpx.AsyncClient, query: str, variables: dict) -> list[dict]:
    data = await stack.gql(http, query, variables)
    return data["chatroom"]["messages"]["edges"]


async def check_pages(stack: Stack, room: Room) -> tuple[str, int]:
    """The cursor of the newest page's first edge, and how many of the two pages were wrong."""
    wrong = 0
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        newest = await _page(stack, http, LAST, {"id": str(room.id)})
        if [edge["node"]["id"] for edge in newest] != [str(i) for i in room.branch[-PAGE:]]:
            wrong += 1
        cursor = newest[0]["cursor"]
        before = await _page(stack, http, BEFORE, {"id": str(room.id), "c": cursor})
        expected = [str(i) for i in room.branch[-2 * PAGE : -PAGE]]
        if [edge["node"]["id"] for edge in before] != expected:
            wrong += 1
    return cursor, wrong


@dataclass
class Paging:
    loads: dict[tuple[str, str], list[Load]]  # (room, query) -> one Load per round
    wrong_pages: int
    trunk: int

    def p50(self, room: str, query: str) -> float:
        return statistics.median(load.p50_ms for load in self.loads[room, query])

    def p99(self, room: str, query: str) -> float:
        return statistics.median(load.p99_ms for load in self.loads[room, query])

    def rps(self, room: str, query: str) -> float:
        return statistics.mean(load.rps for load in self.loads[room, query])

    def errors(self) -> int:
        return sum(load.errors for loads in self.loads.values() for load in loads)

    def ratio(self, query: str) -> float:
        """branched/linear p50, the median of each round's ratio."""
        pairs = zip(self.loads["branched", query], self.loads["linear", query], strict=True)
        return statistics.median(b.p50_ms / a.p50_ms for b, a in pairs)


async def branch_paging(stack: Stack) -> Paging:
    linear, branched = await seed(stack)
    bodies: dict[tuple[str, str], dict] = {}
    wrong = 0
    for name, room in (("linear", linear), ("branched", branched)):
        cursor, wrong_here = await check_pages(stack, room)
        wrong += wrong_here
        bodies[name, "last"] = {"query": LAST, "variables": {"id": str(room.id)}}
        bodies[name, "before"] = {"query": BEFORE, "variables": {"id": str(room.id), "c": cursor}}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        for body in bodies.values():  # warm up: statement caches, the room cache
            for _ in range(WARM_UP):
                await stack.gql(http, body["query"], body["variables"])
    url = stack.url + "/graphql"
    loads: dict[tuple[str, str], list[Load]] = {key: [] for key in bodies}
    for index in range(ROUNDS):
        order = ["linear", "branched"] if index % 2 == 0 else ["branched", "linear"]
        for query in ("last", "before"):
            for name in order:
                loads[name, query].append(
                    await run_wrk(
                        url,
                        connections=CONNECTIONS,
                        seconds=SECONDS,
                        body=bodies[name, query],
                        token=stack.token,
                    )
                )
    return Paging(loads, wrong, len(branched.branch))


async def _main() -> None:
    import time

    started = time.perf_counter()
    async with running_stack(worker=False) as stack:
        ready = time.perf_counter()
        paging = await branch_paging(stack)
        done = time.perf_counter()
    for key, runs in paging.loads.items():
        print(key, [f"{r.rps:.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f}" for r in runs])
    for query in ("last", "before"):
        print(
            query,
            f"linear p50 {paging.p50('linear', query):.2f} ms {paging.rps('linear', query):.0f} req/s;",
            f"branched p50 {paging.p50('branched', query):.2f} ms {paging.rps('branched', query):.0f} req/s;",
            f"ratio {paging.ratio(query):.3f}",
        )
    print(f"wrong pages {paging.wrong_pages}, errors {paging.errors()}")
    print(f"stack {ready - started:.1f} s, row {done - ready:.1f} s")


if __name__ == "__main__":
    uvloop.run(_main())
