"""Settings read from the environment once, at start, and validated.

A bad value stops the process with a message that names the variable, so an
operator never has to guess which line of `.env` is wrong.

Nothing here (or anywhere in the service) reads a `.env` file: docker compose passes it to
the containers, which always run with APP_ENV=production (compose.yaml), and `dev` and the
tests see only their own environment, so a production `.env` left in the working tree never
configures them. Unset APP_ENV means dev; the image sets production.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

T = TypeVar("T")

APP_NAME = "gemini-graphql"

DEV_SECRET_KEY = "dev-only-secret-key-do-not-use-in-production"
KNOWN_DEFAULT_SECRETS = frozenset(
    {DEV_SECRET_KEY, "changeme", "change-me", "secret", "please-change-me-to-32-random-bytes!!"}
)
MIN_PRODUCTION_SECRET_BYTES = 32
MIN_SECRET_ENTROPY_BITS = 128
MIN_SECRET_DISTINCT_CHARACTERS = 16
_SECRET_HINT = "use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
_SECRET_NEEDED = (
    f"production needs a random secret of at least {MIN_PRODUCTION_SECRET_BYTES} bytes; "
    f"{_SECRET_HINT}"
)

# `.env.example` is the production template: every value there to replace holds this, and
# production refuses a setting that still does (one line each, saying what to put instead).
PLACEHOLDER = "change-me"
# As a word of its own (in any case), so that e.g. exchange-meetings.example is no placeholder.
_PLACEHOLDER_PATTERN = re.compile(rf"(?<![a-z0-9]){re.escape(PLACEHOLDER)}(?![a-z0-9])", re.I)
_PLACEHOLDER_HINTS = {
    "SECRET_KEY": _SECRET_HINT,
    "GEMINI_API_KEY": "set your Gemini API key (https://aistudio.google.com/apikey)",
    "SMS_WEBHOOK_URL": "set the URL of your SMS gateway's webhook",
    "SMS_WEBHOOK_TOKEN": "set your SMS gateway's token, or leave it empty",
    "DATABASE_URL": (
        "set its password (POSTGRES_PASSWORD under docker compose), e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
    ),
}

# In dev, any page served from this machine may call the API.
LOCALHOST_ORIGIN = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"

# DRAIN_GRACE_SECONDS unset in production: load balancers notice a failing readiness check
# within about this long (Kubernetes' probe here: every 5 s, out after 2 failures; Fly and
# Render check every 10 s). Elsewhere unset means 0: Ctrl-C and test processes stop at once.
PRODUCTION_DRAIN_GRACE_SECONDS = 10.0


class AppEnv(StrEnum):
    DEV = "dev"
    TEST = "test"
    PRODUCTION = "production"


class AccessLog(StrEnum):
    """Which requests get an access log line (web/middleware.RequestIdMiddleware)."""

    ALL = "all"  # every request and websocket session
    ERRORS = "errors"  # 4xx and 5xx answers, none at all, slow ones, and websocket sessions
    OFF = "off"


class ConfigError(Exception):
    """One or more settings are invalid; `problems` has one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Settings:
    app_env: AppEnv = AppEnv.DEV
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/gemini_graphql"
    redis_url: str = "redis://127.0.0.1:6379/0"
    secret_key: str = DEV_SECRET_KEY
    access_token_expire_minutes: int = 60
    jwt_issuer: str = "gemini-graphql"
    jwt_audience: str = "gemini-graphql"
    gemini_api_key: str | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = None
    gemini_api_version: str = "v1beta"
    gemini_system_instruction: str = (
        "You are a helpful, concise assistant in a chat app. Answer in the user's language."
    )
    gemini_timeout_seconds: float = 30.0
    gemini_retry_base_seconds: float = 1.0
    worker_job_timeout_seconds: int = 45
    stripe_secret_key: str | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_price_id: str | None = None
    stripe_api_base: str | None = None
    stripe_success_url: str = (
        "http://localhost:3000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    )
    stripe_cancel_url: str = "http://localhost:3000/billing/cancel"
    stripe_timeout_seconds: float = 5.0
    debug: bool = False
    # A line per request cost a fifth of `me`'s throughput; in production the proxy in front
    # logs every request and the metrics count them, so the api logs what needs a look.
    access_log: AccessLog = AccessLog.ALL
    host: str = "127.0.0.1"
    port: int = 8000
    basic_daily_limit: int = 5
    pro_daily_limit: int = 1000
    cors_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    sms_backend: str = "console"
    sms_webhook_url: str | None = None
    sms_webhook_token: str | None = None
    auth_rate_per_ip: int = 30
    auth_rate_per_number: int = 10
    max_body_bytes: int = 1024 * 1024
    redis_max_connections: int = 32
    # What every Redis key and pub/sub channel of this deployment starts with (RedisNames),
    # so that deployments sharing a Redis server, even one database, never meet there.
    redis_prefix: str = APP_NAME
    # How long a process may keep a user's row and room list between change notices
    # (bounds changes made outside the service, e.g. by hand in SQL); 0 keeps nothing.
    user_cache_seconds: float = 30.0
    # A subscriber to a reply with no new event for this long gets an error naming the
    # reply's status instead of waiting forever.
    stream_idle_timeout_seconds: float = 300.0
    # Operations running at once on one websocket (each is a task and a Redis channel), and
    # websockets one user may hold open across all api processes.
    max_operations_per_connection: int = 100
    max_websockets_per_user: int = 20
    # A connection whose request head (request line and headers) is not complete this long
    # after it opened or finished its previous response is closed (slow-header clients).
    http_header_timeout_seconds: float = 10.0
    # A request whose body is not complete this long after its head is answered 408.
    http_body_timeout_seconds: float = 30.0
    # Clients reach the service over HTTPS only (a TLS proxy in front): send HSTS.
    force_https: bool = False
    # After SIGTERM, `serve` answers /health/ready with 503 but goes on serving this long, so
    # that load balancers stop sending it traffic before it stops listening.
    drain_grace_seconds: float = 0.0
    # /metrics on the api's port answers only `Authorization: Bearer <this>` when set; in
    # production without it, /metrics is not served there (use METRICS_PORT).
    metrics_token: str | None = None
    # A port of its own for this process's /metrics (the api's `serve`, or the worker);
    # 0: none. Keep it off the load balancer: it answers anyone who can reach it.
    metrics_port: int = 0
    # Api processes `serve` runs on its port (uvicorn's workers); `--workers` wins. One per
    # container is the default: orchestrators scale containers.
    web_concurrency: int = 1

    @property
    def is_production(self) -> bool:
        return self.app_env == AppEnv.PRODUCTION

    @property
    def is_dev(self) -> bool:
        return self.app_env == AppEnv.DEV

    def allows_origin(self, origin: str) -> bool:
        """Whether a browser page from `origin` may call the API: the one rule behind CORS
        and websocket handshakes alike."""
        if "*" in self.cors_origins or origin in self.cors_origins:
            return True
        return self.is_dev and re.fullmatch(LOCALHOST_ORIGIN, origin) is not None

    @property
    def redis_names(self) -> RedisNames:
        """This deployment's Redis key and channel names. Worked out here, not stored, so a
        `replace(settings, redis_url=...)` gets its own."""
        return RedisNames(self.redis_prefix, redis_database(self.redis_url))

    @property
    def channel_prefix(self) -> str:
        """What every pub/sub channel name of this deployment starts with (RedisNames)."""
        return self.redis_names.channel_prefix

    @property
    def payments_enabled(self) -> bool:
        return bool(self.stripe_secret_key and self.stripe_price_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default `os.environ`); raise ConfigError."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        defaults = cls()
        app_env = reader.get("APP_ENV", AppEnv, defaults.app_env)
        # Unset in production stays empty rather than the dev key, so problems() can say so.
        unset_secret = "" if app_env is AppEnv.PRODUCTION else defaults.secret_key
        settings = cls(
            app_env=app_env,
            database_url=reader.get("DATABASE_URL", _database_url, defaults.database_url),
            redis_url=reader.get("REDIS_URL", _redis_url, defaults.redis_url),
            secret_key=reader.get("SECRET_KEY", str, unset_secret),
            access_token_expire_minutes=reader.get(
                "ACCESS_TOKEN_EXPIRE_MINUTES", _positive_int, 60
            ),
            jwt_issuer=reader.get("JWT_ISSUER", str, defaults.jwt_issuer),
            jwt_audience=reader.get("JWT_AUDIENCE", str, defaults.jwt_audience),
            gemini_api_key=reader.optional("GEMINI_API_KEY"),
            gemini_model=reader.get("GEMINI_MODEL", str, defaults.gemini_model),
            gemini_base_url=reader.optional("GEMINI_BASE_URL"),
            gemini_api_version=reader.get("GEMINI_API_VERSION", str, "v1beta"),
            gemini_system_instruction=reader.get(
                "GEMINI_SYSTEM_INSTRUCTION", str, defaults.gemini_system_instruction
            ),
            gemini_timeout_seconds=reader.get("GEMINI_TIMEOUT_SECONDS", _positive_float, 30.0),
            gemini_retry_base_seconds=reader.get("GEMINI_RETRY_BASE_SECONDS", _positive_float, 1.0),
            worker_job_timeout_seconds=reader.get("WORKER_JOB_TIMEOUT_SECONDS", _positive_int, 45),
            stripe_secret_key=reader.optional("STRIPE_SECRET_KEY"),
            stripe_publishable_key=reader.optional("STRIPE_PUBLISHABLE_KEY"),
            stripe_webhook_secret=reader.optional("STRIPE_WEBHOOK_SECRET"),
            stripe_price_id=reader.optional("STRIPE_PRICE_ID"),
            stripe_api_base=reader.optional("STRIPE_API_BASE"),
            stripe_success_url=reader.get("STRIPE_SUCCESS_URL", str, defaults.stripe_success_url),
            stripe_cancel_url=reader.get("STRIPE_CANCEL_URL", str, defaults.stripe_cancel_url),
            stripe_timeout_seconds=reader.get("STRIPE_TIMEOUT_SECONDS", _positive_float, 5.0),
            debug=reader.get("DEBUG", _bool, False),
            access_log=reader.get(
                "ACCESS_LOG",
                AccessLog,
                AccessLog.ERRORS if app_env is AppEnv.PRODUCTION else AccessLog.ALL,
            ),
            host=reader.get("HOST", str, defaults.host),
            port=reader.get("PORT", _port, defaults.port),
            basic_daily_limit=reader.get("BASIC_DAILY_LIMIT", _positive_int, 5),
            pro_daily_limit=reader.get("PRO_DAILY_LIMIT", _positive_int, 1000),
            cors_origins=reader.get("CORS_ORIGINS", _csv, ()),
            cors_allow_credentials=reader.get("CORS_ALLOW_CREDENTIALS", _bool, False),
            sms_backend=reader.get("SMS_BACKEND", _sms_backend, "console"),
            sms_webhook_url=reader.optional("SMS_WEBHOOK_URL"),
            sms_webhook_token=reader.optional("SMS_WEBHOOK_TOKEN"),
            auth_rate_per_ip=reader.get("AUTH_RATE_PER_IP", _positive_int, 30),
            auth_rate_per_number=reader.get("AUTH_RATE_PER_NUMBER", _positive_int, 10),
            max_body_bytes=reader.get("MAX_BODY_BYTES", _positive_int, 1024 * 1024),
            max_operations_per_connection=reader.get(
                "MAX_OPERATIONS_PER_CONNECTION", _positive_int, 100
            ),
            max_websockets_per_user=reader.get("MAX_WEBSOCKETS_PER_USER", _positive_int, 20),
            redis_max_connections=reader.get("REDIS_MAX_CONNECTIONS", _positive_int, 32),
            redis_prefix=reader.get("REDIS_PREFIX", _redis_prefix, defaults.redis_prefix),
            user_cache_seconds=reader.get("USER_CACHE_SECONDS", _non_negative_float, 30.0),
            stream_idle_timeout_seconds=reader.get(
                "STREAM_IDLE_TIMEOUT_SECONDS", _positive_float, 300.0
            ),
            http_header_timeout_seconds=reader.get(
                "HTTP_HEADER_TIMEOUT_SECONDS", _positive_float, 10.0
            ),
            http_body_timeout_seconds=reader.get(
                "HTTP_BODY_TIMEOUT_SECONDS", _positive_float, 30.0
            ),
            force_https=reader.get("FORCE_HTTPS", _bool, False),
            drain_grace_seconds=reader.get(
                "DRAIN_GRACE_SECONDS",
                _non_negative_float,
                PRODUCTION_DRAIN_GRACE_SECONDS if app_env is AppEnv.PRODUCTION else 0.0,
            ),
            metrics_token=reader.optional("METRICS_TOKEN"),
            metrics_port=reader.get("METRICS_PORT", _port_or_zero, 0),
            web_concurrency=reader.get("WEB_CONCURRENCY", _positive_int, 1),
        )
        if env.get("REDIS_CHANNEL_PREFIX", "").strip():  # retired: refused, not ignored
            reader.problems.append(
                "REDIS_CHANNEL_PREFIX: no longer read; every key and channel now starts with "
                "REDIS_PREFIX (channels with <prefix>:db<N>:): set that instead"
            )
        reader.problems.extend(settings.problems())
        if reader.problems:
            raise ConfigError(reader.problems)
        return settings

    def problems(self) -> list[str]:
        """Combinations that are invalid even when each value parses."""
        found: list[str] = []
        if self.is_production:
            placeholders = self.placeholders()
            found.extend(
                f"{name}: still the placeholder from .env.example; "
                f"{_PLACEHOLDER_HINTS.get(name, 'set a real value or leave it empty')}"
                for name in placeholders
            )
            secret_problem = _production_secret_problem(self.secret_key)
            if secret_problem and "SECRET_KEY" not in placeholders:
                found.append(f"SECRET_KEY: {secret_problem}")
            if self.database_url.startswith("sqlite"):
                found.append(
                    "DATABASE_URL: SQLite is the dev mode's store; production needs a "
                    "postgresql:// URL"
                )
            if self.sms_backend == "console":
                found.append(
                    "SMS_BACKEND: 'console' prints login codes to the log; "
                    "use 'webhook' in production"
                )
            if not self.gemini_api_key:
                found.append("GEMINI_API_KEY: required in production (replies need Gemini)")
            if self.stripe_secret_key and not self.stripe_webhook_secret:
                found.append(
                    "STRIPE_WEBHOOK_SECRET: required with STRIPE_SECRET_KEY, or payments "
                    "never turn users Pro"
                )
            if self.stripe_secret_key and not self.stripe_price_id:
                found.append("STRIPE_PRICE_ID: required with STRIPE_SECRET_KEY")
            if self.stripe_secret_key:
                for name, url in (
                    ("STRIPE_SUCCESS_URL", self.stripe_success_url),
                    ("STRIPE_CANCEL_URL", self.stripe_cancel_url),
                ):
                    if re.match(LOCALHOST_ORIGIN + r"(/|$)", url):
                        found.append(
                            f"{name}: a localhost page (the dev default); set your app's page "
                            "Stripe Checkout sends users back to"
                        )
            if self.metrics_token is not None and len(self.metrics_token) < MIN_METRICS_TOKEN_CHARS:
                found.append(
                    f"METRICS_TOKEN: at least {MIN_METRICS_TOKEN_CHARS} characters in "
                    f"production (anyone holding it reads the metrics); {_SECRET_HINT}"
                )
            if "*" in self.cors_origins and self.cors_allow_credentials:
                found.append(
                    "CORS_ORIGINS: '*' with CORS_ALLOW_CREDENTIALS lets any site act for users"
                )
        if self.sms_backend == "webhook" and not self.sms_webhook_url:
            found.append("SMS_WEBHOOK_URL: required when SMS_BACKEND=webhook")
        if self.pro_daily_limit < self.basic_daily_limit:
            found.append("PRO_DAILY_LIMIT: must not be lower than BASIC_DAILY_LIMIT")
        if self.metrics_port and self.metrics_port == self.port:
            found.append("METRICS_PORT: must differ from PORT (the api's own port)")
        return found

    def placeholders(self) -> list[str]:
        """The variables whose values still hold .env.example's placeholder, in the order of
        the fields (e.g. a DATABASE_URL whose password is one)."""
        names = []
        for field in fields(self):
            value = getattr(self, field.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(item, str) and _PLACEHOLDER_PATTERN.search(item) for item in values):
                names.append(field.name.upper())
        return names


MIN_METRICS_TOKEN_CHARS = 24


def _production_secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign production tokens, or None: anyone who guesses it can mint
    tokens for any user, so it must be long and look random, not just long."""
    if not secret:
        return f"not set; {_SECRET_NEEDED}"
    if secret == DEV_SECRET_KEY:  # what Settings() holds when nothing set one
        return f"not set (only dev has a default key); {_SECRET_NEEDED}"
    if secret in KNOWN_DEFAULT_SECRETS:
        return f"a known default value; {_SECRET_NEEDED}"
    if len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
        return f"must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes in production; {_SECRET_HINT}"
    distinct = len(set(secret))
    if distinct == 1:
        return f"too predictable (one character repeated); {_SECRET_HINT}"
    if distinct < MIN_SECRET_DISTINCT_CHARACTERS:
        return (
            f"too predictable (only {distinct} distinct characters; need "
            f"{MIN_SECRET_DISTINCT_CHARACTERS}); {_SECRET_HINT}"
        )
    bits = secret_entropy_bits(secret)
    if bits < MIN_SECRET_ENTROPY_BITS:
        return (
            f"too predictable (about {bits:.0f} bits of entropy; need "
            f"{MIN_SECRET_ENTROPY_BITS}); {_SECRET_HINT}"
        )
    return None


def secret_entropy_bits(secret: str) -> float:
    """An estimate of the bits of entropy in `secret`: its length × the Shannon entropy of
    its characters' frequencies.

    Never above the other usual estimate, length × log2(size of the character classes
    used), and lower when a few characters are used over and over; blind to a repeated
    pattern of many characters. Random tokens score well: the 64 characters of
    `token_urlsafe(48)` about 300 bits.
    """
    length = len(secret)
    counts = Counter(secret).values()
    return -sum(count * math.log2(count / length) for count in counts)


class _Reader:
    """Parses variables one by one, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return default


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


def _positive_float(raw: str) -> float:
    value = _float(raw)
    if not value > 0:  # `not`, so NaN is refused too
        raise ValueError(f"must be positive, got {raw}")
    return value


def _non_negative_float(raw: str) -> float:
    value = _float(raw)
    if not value >= 0:
        raise ValueError(f"must be 0 or more, got {raw}")
    return value


def _port_or_zero(raw: str) -> int:
    return 0 if raw.strip() == "0" else _port(raw)


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _sms_backend(raw: str) -> str:
    if raw not in {"console", "webhook"}:
        raise ValueError(f"expected 'console' or 'webhook', got {raw!r}")
    return raw


# Letters, digits and . _ - : only: no spaces, and none of the glob characters (* ? [ ] \)
# that would turn `SCAN MATCH <prefix>:*` or `PSUBSCRIBE` into a pattern of other names.
_REDIS_PREFIX = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._:-]{0,63}")


def _redis_prefix(raw: str) -> str:
    """A trailing ':' is dropped: RedisNames puts one after the prefix."""
    if not _REDIS_PREFIX.fullmatch(raw):
        raise ValueError(
            "expected up to 64 letters, digits, '.', '_', '-' or ':' (not first), with no "
            f"spaces, got {raw!r}"
        )
    return raw.rstrip(":")


@dataclass(frozen=True, slots=True)
class RedisNames:
    """Every Redis key and pub/sub channel name of one deployment, built here and only here.

    Keys are `<prefix>:<name>` (keys belong to a database); channels `<prefix>:db<N>:<name>`
    (channels belong to the whole server, so the database is part of their name). Two
    deployments sharing a server, or even a database, differ in `prefix` and so in every
    name. arq's own job keys (`arq:job:<job id>`, ...) carry the prefix in the job id.
    """

    prefix: str
    database: int = 0

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def channel_prefix(self) -> str:
        return f"{self.prefix}:db{self.database}:"

    def channel(self, name: str) -> str:
        return self.channel_prefix + name

    @property
    def arq_queue(self) -> str:
        """The arq queue (a sorted set) that api processes fill and workers poll."""
        return self.key("arq:queue")


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    redis_database(raw)
    return raw


def redis_database(url: str) -> int:
    """The database number a Redis URL selects, as redis-py reads it: `?db=N`, else (not for
    unix:// sockets, whose path is the socket's) the path `/N`, else 0."""
    parts = urlsplit(url)
    query = parse_qs(parts.query).get("db")
    if query and query[0]:
        raw = unquote(query[0])
    elif parts.scheme == "unix":
        raw = ""
    else:
        raw = unquote(parts.path).replace("/", "")
    if not raw:
        return 0
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(f"the database must be a number, got {raw!r}")
    return int(raw)


def _database_url(raw: str) -> str:
    """Accept the plain `postgresql://` URLs operators have and use the asyncpg driver."""
    for prefix in ("postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+asyncpg://" + raw[len(prefix) :]
    if raw.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return raw
    if raw.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + raw[len("sqlite://") :]
    raise ValueError("expected a postgresql:// (or, for dev, sqlite://) URL")
