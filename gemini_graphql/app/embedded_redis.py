"""An in-process Redis-compatible server for the dev mode (fakeredis over real TCP).

The app talks to it exactly as to Redis, so the queue, pub/sub, streams and
caches run through the production code paths. It keeps nothing on disk, which
is fine: losing Redis loses no user data.
"""

from __future__ import annotations

import threading
from importlib.metadata import version

from fakeredis import TcpFakeServer

SERVER_VERSION = (8, 0)
# The fakeredis releases _add_info_command was tried with; pyproject.toml allows only these.
TESTED_FAKEREDIS = "2.39 to 2.41"


def _add_info_command() -> None:
    """Teach fakeredis INFO, which it lacks and arq's worker sends once at start
    (arq.connections.log_redis_info: without an answer the worker does not start).

    fakeredis has no public way to add a command, so this is the one use of its private API:
    the command registry's decorator and the socket class behind each connection (fakeredis
    2.38 and older keep that class in another module). tests/test_dev_mode.py fails with the
    message below when a release moves them.
    """
    try:
        from fakeredis._commands import command
        from fakeredis._socket._fakesocket import FakeSocket
    except ImportError as error:
        raise RuntimeError(
            f"fakeredis {version('fakeredis')} moved the private API the dev mode's embedded "
            f"Redis uses to add INFO (tried with fakeredis {TESTED_FAKEREDIS}): pin fakeredis "
            "in pyproject.toml to those releases, or update _add_info_command"
        ) from error

    answer = b"# Server\r\nredis_version:%d.%d.0\r\nredis_mode:embedded\r\n" % SERVER_VERSION

    @command((), (bytes,))
    def info(self: FakeSocket, *sections: bytes) -> bytes:
        return answer

    FakeSocket.info = info  # type: ignore[attr-defined]


class EmbeddedRedis:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        _add_info_command()
        self._server = TcpFakeServer(
            (host, port), server_type="redis", server_version=SERVER_VERSION
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-redis", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def start(self) -> EmbeddedRedis:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
