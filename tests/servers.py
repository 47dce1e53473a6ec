"""Private redis-server and PostgreSQL servers that fault tests stop, kill and restart.

The shared services of the machine are never touched: each server here listens on its own
free loopback port with its own temporary directory, comes back on the same port after a
restart, and is always killed and removed afterwards (also when the test fails).

(PYTEST_DONT_REWRITE: test modules import this module before pytest_plugins loads it, which
would warn that it cannot be rewritten; its few asserts are internal.)

Use the fixtures from a test module with `pytest_plugins = ["tests.servers"]` (one cluster
for the whole run), or import them by name (`redis_server`, and `postgres_cluster` together
with `postgres_cluster_session`, which it stands on).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

import asyncpg
import pytest

from gemini_graphql.testing.processes import free_port

LOOPBACK = "127.0.0.1"
StopMode = Literal["smart", "fast", "immediate"]
# How pg_ctl asks the postmaster to stop in each mode.
STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class ServerUnavailable(RuntimeError):
    """The server's binaries are not installed here: fixtures skip on it, nothing else does."""


# --- processes -----------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """Whether a process has exited. A zombie counts as gone: it holds no port, file or shared
    memory, and a killed postgres child is reparented to an init that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def child_pids(parent: int) -> list[int]:
    """The live children of a process (the postmaster's backends and helpers)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


async def wait_gone(pids: list[int], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not all(pid_gone(pid) for pid in pids):
            await asyncio.sleep(0.02)


def log_tail(path: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_bytes()[-size:].decode(errors="replace")
    return ""


async def _exited(process: asyncio.subprocess.Process, timeout: float) -> bool:
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        return False
    return True


# --- Redis ---------------------------------------------------------------------------------


@functools.cache
def redis_binary() -> str:
    """`redis-server`: TEST_REDIS_SERVER, else the one on PATH, else Debian's."""
    for candidate in (
        os.environ.get("TEST_REDIS_SERVER"),
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")


class RedisServer:
    """A `redis-server` on 127.0.0.1 of this test's own.

    persistent=True writes every command to an append-only file and fsyncs it before
    answering, so even kill() loses nothing; persistent=False keeps the data in memory only,
    so kill() loses all of it. A graceful stop() decides for itself with `keep_data`.
    The port is chosen once: restarts come back on it, so clients configured with `url`
    reconnect to the same server.
    """

    def __init__(self, *, persistent: bool = False, startup_timeout: float = 10) -> None:
        self.binary = redis_binary()
        self.persistent = persistent
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.log_path = self.directory / "redis.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The pid of the running server (of the last one after it stopped)."""
        return self._process.pid if self._process else None

    def _arguments(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--save", "",  # no background snapshots: data is on disk by AOF or SHUTDOWN SAVE
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
        ]  # fmt: skip

    async def start(self, *, keep_data: bool = True) -> None:
        """Start the server and return once it answers PING (not just accepts: while it loads
        its data it answers -LOADING). keep_data=False: with none of what it had saved."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        if not keep_data:
            self._delete_data()
        self._process = await asyncio.create_subprocess_exec(
            *self._arguments(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the test run must not take it down before cleanup
        )
        try:
            async with asyncio.timeout(self.startup_timeout):
                while await self._call(b"PING") != b"+PONG":
                    if not self.running:
                        raise RuntimeError(
                            f"redis-server exited on start:\n{log_tail(self.log_path)}"
                        )
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.kill()
            raise

    async def _call(self, command: bytes) -> bytes | None:
        """One inline command on a connection of its own: the first reply line, b"" when the
        server closed the connection (as SHUTDOWN does), None when it could not be reached."""
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        except (OSError, TimeoutError):
            return None
        try:
            async with asyncio.timeout(5):
                writer.write(command + b"\r\n")
                await writer.drain()
                return (await reader.readline()).rstrip(b"\r\n")
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, *, keep_data: bool = True, timeout: float = 10) -> None:
        """Stop gracefully with SHUTDOWN. keep_data=True saves everything first (SHUTDOWN SAVE,
        persistent or not): the next start has every key. keep_data=False stops without saving
        and deletes the data files: the next start is empty."""
        if self.running:
            assert self._process is not None
            reply = await self._call(b"SHUTDOWN SAVE" if keep_data else b"SHUTDOWN NOSAVE")
            if reply:  # an error (say, the save failed): the server is still up
                await self.kill()
                raise RuntimeError(
                    f"redis-server refused SHUTDOWN: {reply!r}\n{log_tail(self.log_path)}"
                )
            if not await _exited(self._process, timeout):
                await self.kill()
                raise RuntimeError(f"redis-server did not stop in {timeout} s")
        if not keep_data:
            self._delete_data()

    async def kill(self) -> None:
        """SIGKILL, as in a crash: only what the append-only file holds survives (all of it when
        persistent, nothing otherwise)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()

    async def restart(
        self, down_for: float = 0.0, *, keep_data: bool = True, kill: bool = False
    ) -> None:
        """Stop, stay down `down_for` seconds (connections are refused meanwhile), start again on
        the same port. kill=True crashes it instead of stopping: then keep_data=True keeps what
        persistence kept, keep_data=False nothing."""
        if kill:
            await self.kill()
            if not keep_data:
                self._delete_data()
        else:
            await self.stop(keep_data=keep_data)
        await asyncio.sleep(down_for)
        await self.start()

    def _delete_data(self) -> None:
        (self.directory / "dump.rdb").unlink(missing_ok=True)
        shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)

    async def close(self) -> None:
        """Kill the server and remove its directory; safe to call in any state, more than once."""
        await self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- PostgreSQL ----------------------------------------------------------------------------


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres"))


@functools.cache
def postgres_bindir() -> Path:
    """Where initdb and postgres are: TEST_POSTGRES_BINDIR, else what `pg_config --bindir`
    says, else the newest /usr/lib/postgresql/*/bin (Debian keeps them off PATH), else PATH.
    pg_config comes first only if its directory has the server: on Debian it can come from
    libpq-dev of another major version than the server installed."""
    candidates: list[Path] = []
    if os.environ.get("TEST_POSTGRES_BINDIR"):
        candidates.append(Path(os.environ["TEST_POSTGRES_BINDIR"]))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(
        versions,
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    raise ServerUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql"
    )


def _server_account() -> tuple[int, int] | None:
    """The (uid, gid) to run PostgreSQL as: it refuses to run as root, so as root the
    `postgres` account (Debian's package makes it), else `nobody`; None: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(name)
            return account.pw_uid, account.pw_gid
    raise ServerUnavailable(
        "running as root and there is no postgres (or nobody) account to run PostgreSQL as"
    )


class PostgresCluster:
    """A PostgreSQL cluster of this test run's own: initdb'd into a temporary directory, trust
    authentication, listening on 127.0.0.1 only (and a socket in its directory).

    Tuned for speed, not for surviving the machine: fsync and full_page_writes are off. That
    loses nothing when only PostgreSQL dies (kill() included): a commit still writes its WAL to
    the kernel before it returns (synchronous_commit stays on).
    """

    SETTINGS: ClassVar[dict[str, str]] = {
        "listen_addresses": f"'{LOOPBACK}'",
        "max_connections": "100",
        "shared_buffers": "16MB",
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "on",
        "jit": "off",
        "huge_pages": "off",
        "logging_collector": "off",
        "log_min_messages": "warning",
    }

    def __init__(self, *, startup_timeout: float = 30) -> None:
        self.bindir = postgres_bindir()
        self.account = _server_account()
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        self.data = self.directory / "data"
        self.sockets = self.directory / "sockets"
        self.log_path = self.directory / "postgres.log"
        self._process: asyncio.subprocess.Process | None = None
        self.sockets.mkdir()
        if self.account:
            for path in (self.directory, self.sockets):
                os.chown(path, *self.account)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq/asyncpg DSN of one database of the cluster."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def url_for(self, database: str) -> str:
        """A SQLAlchemy URL (asyncpg driver), as Settings.database_url wants it."""
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (of the last one after it stopped)."""
        return self._process.pid if self._process else None

    def pids(self) -> list[int]:
        """The postmaster and its children: what must be gone after a stop or a kill."""
        if not self.running or self.pid is None:
            return []
        return [self.pid, *child_pids(self.pid)]

    async def _run(self, *arguments: str, **options: object) -> asyncio.subprocess.Process:
        """A PostgreSQL program, as the server account, in an environment of its own (no PG*
        variables of ours leak in)."""
        owner = (
            {"user": self.account[0], "group": self.account[1], "extra_groups": []}
            if self.account
            else {}
        )
        return await asyncio.create_subprocess_exec(
            *arguments,
            cwd=self.directory,
            env={"PATH": f"{self.bindir}:{os.defpath}", "LC_ALL": "C", "HOME": str(self.directory)},
            stdin=subprocess.DEVNULL,
            **owner,  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )

    async def init(self) -> None:
        """initdb, then the settings (once; start() does it when needed)."""
        process = await self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({process.returncode}):\n{output.decode(errors='replace')}"
            )
        settings = {
            **self.SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/servers.py\n"
                + "".join(f"{key} = {value}\n" for key, value in settings.items())
            )

    async def start(self) -> None:
        """Start the postmaster (initdb first if needed) and return once it accepts a query:
        after a kill() that includes crash recovery."""
        if self.running:
            raise RuntimeError("postgres is already running")
        if not (self.data / "PG_VERSION").exists():
            await self.init()
        with self.log_path.open("ab") as log:
            self._process = await self._run(
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                stdout=log,
                stderr=log,
                start_new_session=True,  # as for Redis: out of reach of a Ctrl-C
            )  # fmt: skip
        try:
            async with asyncio.timeout(self.startup_timeout):
                while not await self._accepts():
                    if not self.running:
                        raise RuntimeError(f"postgres exited on start:\n{log_tail(self.log_path)}")
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.kill()
            raise

    async def _accepts(self) -> bool:
        try:
            connection = await asyncpg.connect(self.dsn, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False  # refused, or "the database system is starting up"
        try:
            await connection.fetchval("SELECT 1")
            return True
        finally:
            await connection.close()

    async def stop(self, mode: StopMode = "fast", *, timeout: float = 30) -> None:
        """Stop as `pg_ctl stop -m mode` would. fast: sessions are ended (clients get
        AdminShutdown), then a checkpoint. immediate: everything dies at once, and the next start
        recovers from WAL. smart waits for every client to leave: not for use under load."""
        if not self.running:
            return
        assert self._process is not None
        self._process.send_signal(STOP_SIGNALS[mode])
        if not await _exited(self._process, timeout):
            await self.kill()
            raise RuntimeError(
                f"postgres did not stop ({mode}) in {timeout} s:\n{log_tail(self.log_path)}"
            )

    async def kill(self) -> None:
        """SIGKILL the postmaster and every child, as in a crash (committed data survives).
        The children go too: a backend left behind holds the shared memory, and the next
        postmaster refuses to start beside it. The postmaster is stopped first so that it
        cannot fork one more while they are counted."""
        if not self.running:
            return
        assert self._process is not None
        pid = self._process.pid
        with contextlib.suppress(ProcessLookupError):  # it may have just died itself
            os.kill(pid, signal.SIGSTOP)
        children = child_pids(pid)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        await wait_gone(children)

    async def restart(
        self, down_for: float = 0.0, *, mode: StopMode = "fast", kill: bool = False
    ) -> None:
        """Stop (or kill), stay down `down_for` seconds (connections are refused meanwhile), start
        again on the same port. Every connection from before is broken; data is kept."""
        if kill:
            await self.kill()
        else:
            await self.stop(mode)
        await asyncio.sleep(down_for)
        await self.start()

    async def ensure_running(self) -> None:
        if not self.running:
            await self.start()

    async def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL (postgresql+asyncpg://...)."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url_for(name)

    async def drop_database(self, name: str) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    async def close(self) -> None:
        """Stop the cluster (immediate: its data is thrown away anyway) and remove its
        directory; safe to call in any state, more than once."""
        try:
            await self.stop("immediate", timeout=10)
        finally:
            await self.kill()
            shutil.rmtree(self.directory, ignore_errors=True)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A persistent Redis of this test's own (starting one takes milliseconds). For one
    without persistence, or several: `async with RedisServer(persistent=False) as server`."""
    try:
        server = RedisServer(persistent=True)
    except ServerUnavailable as error:
        pytest.skip(str(error))
    async with server:
        yield server


@pytest.fixture(scope="session")
async def postgres_cluster_session() -> AsyncIterator[PostgresCluster]:
    """The one cluster of the run (initdb takes about a second). Tests should take
    `postgres_cluster`, which also brings it back up after a test that left it down."""
    try:
        cluster = PostgresCluster()
    except ServerUnavailable as error:
        pytest.skip(str(error))
    async with cluster:
        yield cluster


@pytest.fixture
async def postgres_cluster(
    postgres_cluster_session: PostgresCluster,
) -> AsyncIterator[PostgresCluster]:
    """The shared cluster, running when the test starts and again after it, however the test
    left it. Tests may stop, kill and restart it; anything else they create (databases) is
    theirs to keep apart, e.g. with create_database()."""
    await postgres_cluster_session.ensure_running()
    yield postgres_cluster_session
    await postgres_cluster_session.ensure_running()
