"""Deployments that share nothing: two apps and their workers on one Redis server, even on one
database, differing in REDIS_PREFIX alone, never see each other's queue, jobs, streams,
caches, counters or notices, and every key either writes starts with its prefix."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import httpx
import pytest
import redis.asyncio as aioredis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job
from arq.worker import Worker

from gemini_graphql.app.http_app import create_app
from gemini_graphql.chat.reply_queue import WAKE_CHANNEL, reply_job_id
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.chat.stops import STOP_CHANNEL
from gemini_graphql.config import APP_NAME, ConfigError, RedisNames, Settings, redis_database
from gemini_graphql.infra.user_cache import CHANNEL as USERS_CHANGED
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script
from tests.chat_harness import Live, WsClient, running_worker, send, user_with_room
from tests.conftest import FakeClock, GraphQLClient, RecordingSms
from tests.live import serve
from tests.redis_claim import CLAIM_KEY, MARK_KEY
from tests.test_replies import wait_finished
from tests.test_stop_reply import stop

# arq's own keys, whose `arq:` arq hard-codes: ours carry the deployment's prefix in the job id.
ARQ_JOB_KEYS = (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix)
ROOMS = "query { chatrooms(first: 10) { edges { node { id title } } } }"
ME = "query { me { id tier usage { used limit } } }"


def test_the_default_prefix_is_the_app_name() -> None:
    settings = Settings.from_env({})
    assert settings.redis_prefix == APP_NAME == "gemini-graphql"
    assert Settings().redis_prefix == APP_NAME
    names = settings.redis_names
    assert names.key("throttle") == "gemini-graphql:throttle"
    assert names.channel(WAKE_CHANNEL) == "gemini-graphql:db0:replies:queued"
    assert names.arq_queue == "gemini-graphql:arq:queue"
    # Blank, like any variable here, means the default: a deployment cannot lose its names
    # by copying an empty line from .env.example.
    assert Settings.from_env({"REDIS_PREFIX": " "}).redis_prefix == APP_NAME


def test_the_prefix_can_be_chosen() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/3", "REDIS_PREFIX": "acme.staging_2"}
    names = Settings.from_env(env).redis_names
    assert names == RedisNames("acme.staging_2", 3)
    assert names.key("rooms:v:1") == "acme.staging_2:rooms:v:1"
    assert names.channel("users:changed") == "acme.staging_2:db3:users:changed"
    # A trailing ':' is dropped rather than doubled.
    assert Settings.from_env({**env, "REDIS_PREFIX": "acme:eu:"}).redis_prefix == "acme:eu"


@pytest.mark.parametrize(
    "prefix",
    ["two words", "tab\there", "star*", "glob?", "[set]", "back\\slash", ":leading", "é", "x" * 65],
)
def test_a_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_PREFIX": prefix})
    (problem,) = caught.value.problems
    assert problem.startswith("REDIS_PREFIX: ") and repr(prefix) in problem


def test_the_retired_channel_prefix_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_CHANNEL_PREFIX": "staging:"})
    assert [line.split(":")[0] for line in caught.value.problems] == ["REDIS_CHANNEL_PREFIX"]
    assert "REDIS_PREFIX" in caught.value.problems[0]
    Settings.from_env({"REDIS_CHANNEL_PREFIX": ""})  # .env.example's old empty line is fine


@dataclass
class Deployment:
    settings: Settings
    live: Live
    worker: Worker

    @property
    def names(self) -> RedisNames:
        return self.settings.redis_names


@contextlib.asynccontextmanager
async def deployment(
    settings: Settings, sms: RecordingSms, clock: FakeClock
) -> AsyncIterator[Deployment]:
    """An api behind a real uvicorn server and an arq worker, both of `settings`."""
    app = create_app(settings, clock=clock, sms=sms)
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        running_worker(settings, clock, idle_poll_seconds=0.1) as worker,
    ):
        ws_url = url.replace("http://", "ws://") + "/graphql"
        yield Deployment(settings, Live(GraphQLClient(http), ws_url, app), worker)


@dataclass
class Journey:
    user_id: str
    replies: list[str]  # a COMPLETE one, then a STOPPED one


async def journey(
    side: Deployment, sms: RecordingSms, fake: FakeGemini, redis_client, pg
) -> Journey:
    """Log in, list rooms, send a message and follow its reply, then stop a second one
    mid-stream: every kind of key and notice the service has."""
    gql = side.live.http
    user, room_id = await user_with_room(gql, sms)
    for _ in range(2):  # the second from the caches
        assert (await gql(ROOMS, token=user.token))["data"]["chatrooms"]["edges"]
        assert (await gql(ME, token=user.token))["data"]["me"]["id"] == user.user_id
    done = (await send(gql, user.token, room_id, "hello"))["reply"]["id"]
    async with WsClient.connect(side.live.ws_url, user.token) as ws:
        # The open websocket holds a lease, counted under this deployment's name only.
        lease = side.names.key(f"websockets:{user.user_id}")
        assert await redis_client.zcard(lease) == 1
        result = await ws.collect(await ws.start(done))
    assert result.completed and result.text == "Echo: hello"
    assert (await wait_finished(pg, done))["status"] == "complete"

    fake.script(Script(chunks=["one ", "two ", "three "], hang_after=2))
    stopped = (await send(gql, user.token, room_id, "go on"))["reply"]["id"]
    async with WsClient.connect(side.live.ws_url, user.token) as ws:
        op = await ws.start(stopped)
        assert len((await ws.collect(op, limit=2)).events) == 2  # the worker now stalls
        payload = await stop(gql, user.token, stopped)
        rest = await ws.collect(op)
    assert payload["errors"] == [] and payload["message"]["status"] == "STOPPED", payload
    assert payload["message"]["content"] == "one two "
    assert rest.completed and rest.events[-1]["status"] == "STOPPED", rest
    return Journey(user.user_id, [done, stopped])


async def test_two_deployments_on_one_redis_database_share_nothing(
    chat_settings: Settings,
    sms: RecordingSms,
    clock: FakeClock,
    fake_gemini: tuple[FakeGemini, str],
    redis_client: aioredis.Redis,
    pg,
) -> None:
    """Two deployments, same Redis URL (so the same database) and the same PostgreSQL, each
    with its api and worker, both running throughout both journeys."""
    fake, _ = fake_gemini
    base = chat_settings.redis_prefix
    settings = [replace(chat_settings, redis_prefix=f"{base}-{side}") for side in "ab"]
    assert settings[0].redis_url == settings[1].redis_url
    notices = redis_client.pubsub()
    await notices.psubscribe(f"{base}*")  # every channel of this run's deployments
    async with deployment(settings[0], sms, clock) as a, deployment(settings[1], sms, clock) as b:
        sides = (a, b)
        # Each worker listens on its own deployment's channels, and nobody else does.
        for side in sides:
            for name in (WAKE_CHANNEL, STOP_CHANNEL):
                channel = side.names.channel(name)
                async with asyncio.timeout(10):  # the worker subscribes as it starts
                    while not (listeners := (await redis_client.pubsub_numsub(channel))[0][1]):
                        await asyncio.sleep(0.02)
                assert listeners == 1, channel
        journeys = [await journey(side, sms, fake, redis_client, pg) for side in sides]
        for side in sides:  # written while the worker runs (deleted when it stops)
            assert await redis_client.exists(side.worker.health_check_key)
        seen = await received(notices)
        listened = {c.decode() for c in await redis_client.pubsub_channels(f"{base}*")}

    # Each reply's job was queued, run and its result kept by its own deployment only.
    for side, other, trip in ((a, b, journeys[0]), (b, a, journeys[1])):
        for reply_id in trip.replies:
            job_id = reply_job_id(side.names, uuid.UUID(reply_id))
            done = await Job(job_id, redis_client).result_info()
            assert done is not None and done.success, (reply_id, done)
            assert done.queue_name == side.names.arq_queue  # the worker that ran it polls there
            assert (
                await Job(reply_job_id(other.names, uuid.UUID(reply_id)), redis_client).info()
                is None
            )
        assert side.worker.queue_name == side.names.arq_queue
        assert side.worker.health_check_key.startswith(side.names.arq_queue + ":health-check:")

    # Notices: on their deployment's channels, about their deployment's users and replies.
    channel_prefixes = [side.names.channel_prefix for side in sides]
    assert all(c.startswith(tuple(channel_prefixes)) for c in listened), listened
    assert all(channel.startswith(tuple(channel_prefixes)) for channel, _ in seen), seen
    for side, trip in zip(sides, journeys, strict=True):
        mine = [(c, d) for c, d in seen if c.startswith(side.names.channel_prefix)]
        kinds = {c.removeprefix(side.names.channel_prefix).split(":")[0] for c, _ in mine}
        assert {"replies", "users", "reply", "rooms"} <= kinds, kinds
        wakes = [d for c, d in mine if c == side.names.channel(WAKE_CHANNEL)]
        assert len(wakes) == 2  # one per reply queued
        stops = [d for c, d in mine if c == side.names.channel(STOP_CHANNEL)]
        assert stops == [trip.replies[1].encode()]
        user_hex = uuid.UUID(trip.user_id).hex.encode()
        changed = {d for c, d in mine if c == side.names.channel(USERS_CHANGED)}
        assert changed == {user_hex}
        replied = {c for c, _ in mine if c.startswith(side.names.channel("reply:"))}
        assert replied == {side.names.channel(f"reply:{reply}") for reply in trip.replies}

    # Every key in the database is one deployment's: its own name, or an arq key of its job.
    keys = {key.decode() async for key in redis_client.scan_iter(count=1000)} - {
        CLAIM_KEY,
        MARK_KEY,
    }
    by_side: dict[str, set[str]] = {side.names.prefix: set() for side in sides}
    strays = set()
    for key in keys:
        name = next((key.removeprefix(p) for p in ARQ_JOB_KEYS if key.startswith(p)), key)
        owner = next((p for p in by_side if name.startswith(p + ":")), None)
        if owner is None:
            strays.add(key)
        else:
            by_side[owner].add(key)
    assert strays == set()
    for side, trip in zip(sides, journeys, strict=True):
        names, channels = side.names, ReplyChannels(side.names)
        mine = by_side[names.prefix]
        reply_ids = [uuid.UUID(reply) for reply in trip.replies]
        expected = {
            *(channels.stream(reply) for reply in reply_ids),
            channels.stop_marker(reply_ids[1]),
            names.key(f"rooms:v:{trip.user_id}"),
            *(result_key_prefix + reply_job_id(names, reply) for reply in reply_ids),
        }
        assert expected <= mine, expected - mine
        prefixes = {
            names.key("throttle:"),  # the auth mutations' counters
            names.key(f"rooms:first:{trip.user_id}:"),  # the cached room list page
            result_key_prefix + names.key("cron:requeue_stranded_replies:"),  # its tick at start
        }
        assert all(any(key.startswith(p) for key in mine) for p in prefixes), mine
    await notices.aclose()


async def received(pubsub: aioredis.client.PubSub) -> list[tuple[str, bytes]]:
    """What arrived so far on the pattern subscription: (channel, data)."""
    found = []
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "pmessage":
            found.append((message["channel"].decode(), message["data"]))
    return found


def test_the_database_is_part_of_every_channel_name() -> None:
    """The same prefix on two databases of one server: keys differ by database, channels by
    name (channels belong to the server)."""
    one, two = (
        Settings(redis_url=f"redis://127.0.0.1:6379/{n}", redis_prefix="same") for n in (1, 2)
    )
    assert one.redis_names.key("k") == two.redis_names.key("k")
    assert one.channel_prefix != two.channel_prefix
    assert redis_database(two.redis_url) == two.redis_names.database == 2
