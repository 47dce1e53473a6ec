"""A Redis database index of a test run's own, so that runs on one machine do not collide.

A run claims a database by setting CLAIM_KEY in it (with an expiry that a thread keeps
renewing) only if no other run holds it, and only if the database is empty or held test
data before (MARK_KEY, which never expires): someone else's data is never touched. Claiming
empties it, and so does release() at the end of the run; a run that crashed leaves its data,
and its claim expires after CLAIM_SECONDS. Every step is one Lua script, so atomic.

Keys are per database, pub/sub channels are not: they are global to the Redis server.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Sequence

import redis
from redis.exceptions import RedisError, ResponseError

CLAIM_KEY = "gemini-graphql-tests:claim"  # the run holding the database; expires unless renewed
MARK_KEY = "gemini-graphql-tests:database"  # never expires: what is here is a test run's
CLAIM_SECONDS = 60
# 0 is everything else's default, 14 bench/stack.py's; the old fixed 13 early, low ones last.
CANDIDATES = (15, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)

# KEYS: claim, mark; ARGV: run id, seconds. 1: claimed, 0: another run holds it, -1: not ours.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('DBSIZE') > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[2], '1')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# 1: renewed, 0: the claim was lost (expired, and maybe taken by another run).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Everything but the claim and the mark deleted; 0 (and nothing deleted): the claim was lost.
EMPTY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[2], '1')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('FLUSHDB') end
return 1
"""


class NoFreeDatabase(RuntimeError):
    pass


class RedisClaim:
    """The database `index` of the Redis server at `base_url`, held until release()."""

    def __init__(self, base_url: str, index: int, client: redis.Redis, run_id: str) -> None:
        self.base_url = base_url
        self.index = index
        self.run_id = run_id
        self.lost = False
        self._client = client
        self._stop = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew, name=f"redis-claim-{index}", daemon=True
        )
        self._renewer.start()

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.index}"

    @property
    def empty_args(self) -> tuple[str, int, str, str, str, int]:
        """What `eval` takes to run EMPTY on this claim: (script, numkeys, *keys, *args)."""
        return (EMPTY, 2, CLAIM_KEY, MARK_KEY, self.run_id, CLAIM_SECONDS)

    @classmethod
    def take(cls, base_url: str, candidates: Sequence[int] = CANDIDATES) -> RedisClaim:
        run_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        refused: list[str] = []
        for index in candidates:
            client = redis.Redis.from_url(f"{base_url}/{index}")
            try:
                claimed = client.eval(_CLAIM, 2, CLAIM_KEY, MARK_KEY, run_id, CLAIM_SECONDS)
            except ResponseError as error:  # e.g. "DB index is out of range"
                client.close()
                refused.append(f"{index}: {error}")
                continue
            except BaseException:
                client.close()
                raise
            if claimed == 1:
                return cls(base_url, index, client, run_id)
            client.close()
            refused.append(f"{index}: {'held by another run' if claimed == 0 else 'not test data'}")
        raise NoFreeDatabase(
            f"no free Redis database at {base_url} ({'; '.join(refused)}): "
            "stop another run, or set TEST_REDIS_DB to one to use unclaimed"
        )

    def _renew(self) -> None:
        while not self._stop.wait(CLAIM_SECONDS / 6):
            try:
                renewed = self._client.eval(_RENEW, 1, CLAIM_KEY, self.run_id, CLAIM_SECONDS)
            except RedisError:
                continue  # Redis away for a moment: the claim outlives a few misses
            if not renewed:
                self.lost = True
                return

    def release(self) -> None:
        """Stop renewing, and empty the database (if still ours), claim and mark included."""
        self._stop.set()
        self._renewer.join()
        try:
            self._client.eval(_RELEASE, 1, CLAIM_KEY, self.run_id)
        finally:
            self._client.close()
