"""Settings from the environment: defaults, readable errors, production refusals."""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import replace

import pytest
from redis.connection import parse_url

from gemini_graphql.config import (
    DEV_SECRET_KEY,
    AppEnv,
    ConfigError,
    Settings,
    redis_database,
    secret_entropy_bits,
)

STRONG = secrets.token_urlsafe(48)
PRODUCTION = {
    "APP_ENV": "production",
    "SMS_BACKEND": "webhook",
    "SMS_WEBHOOK_URL": "https://sms.internal/",
    "GEMINI_API_KEY": "key",
}
HINT = "use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.app_env is AppEnv.DEV
    assert settings.access_token_expire_minutes == 60
    assert (settings.basic_daily_limit, settings.pro_daily_limit) == (5, 1000)
    assert (settings.http_header_timeout_seconds, settings.http_body_timeout_seconds) == (10, 30)
    assert settings.force_https is False


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "APP_ENV": "test",
            "DATABASE_URL": "postgresql://u:p@db:5432/app",
            "PORT": "9000",
            "DEBUG": "yes",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "BASIC_DAILY_LIMIT": "7",
            "HTTP_HEADER_TIMEOUT_SECONDS": "2.5",
            "HTTP_BODY_TIMEOUT_SECONDS": "60",
            "FORCE_HTTPS": "true",
        }
    )
    assert (settings.http_header_timeout_seconds, settings.http_body_timeout_seconds) == (2.5, 60)
    assert settings.force_https is True
    assert settings.database_url == "postgresql+asyncpg://u:p@db:5432/app"
    assert settings.port == 9000 and settings.debug is True
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.basic_daily_limit == 7


def test_every_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "APP_ENV": "staging",
                "PORT": "eighty",
                "ACCESS_TOKEN_EXPIRE_MINUTES": "-5",
                "DEBUG": "maybe",
                "REDIS_URL": "http://nope",
                "DATABASE_URL": "mysql://x",
                "HTTP_HEADER_TIMEOUT_SECONDS": "0",
                "HTTP_BODY_TIMEOUT_SECONDS": "soon",
                "FORCE_HTTPS": "sometimes",
            }
        )
    named = {problem.split(":")[0] for problem in caught.value.problems}
    assert named == {
        "APP_ENV",
        "PORT",
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "DEBUG",
        "REDIS_URL",
        "DATABASE_URL",
        "HTTP_HEADER_TIMEOUT_SECONDS",
        "HTTP_BODY_TIMEOUT_SECONDS",
        "FORCE_HTTPS",
    }


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("redis://127.0.0.1:6379/0", "db0:"),
        ("redis://127.0.0.1:6379/13", "db13:"),
        ("redis://127.0.0.1:6379", "db0:"),
        ("redis://127.0.0.1:6379/", "db0:"),
        ("rediss://:pw@redis.internal:6380/2", "db2:"),
        ("redis://127.0.0.1:6379/1?db=7", "db7:"),  # the query wins, as in redis-py
        ("unix:///run/redis/redis.sock", "db0:"),
        ("unix:///run/redis/redis.sock?db=5", "db5:"),
    ],
)
def test_the_channel_prefix_defaults_to_the_database_number(url: str, prefix: str) -> None:
    """Channels are per server, keys per database: deployments on different databases of
    one server are kept apart with no configuration."""
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.redis_channel_prefix == ""
    assert settings.channel_prefix == prefix
    assert redis_database(url) == parse_url(url).get("db", 0)  # the database redis-py uses


def test_the_channel_prefix_can_be_chosen() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/3", "REDIS_CHANNEL_PREFIX": "staging:"}
    assert Settings.from_env(env).channel_prefix == "staging:"
    # Set but empty, like any variable here, means the default: a deployment cannot lose
    # its namespace by copying a blank line from .env.example.
    assert Settings.from_env({**env, "REDIS_CHANNEL_PREFIX": " "}).channel_prefix == "db3:"


def test_the_derived_prefix_follows_the_url() -> None:
    """Derived when asked, not stored: settings copied with another REDIS_URL (the dev
    server's embedded Redis, the benchmarks) get that database's prefix."""
    assert Settings().channel_prefix == "db0:"
    assert replace(Settings(), redis_url="redis://127.0.0.1:6379/14").channel_prefix == "db14:"
    chosen = Settings(redis_channel_prefix="x:")
    assert replace(chosen, redis_url="redis://127.0.0.1:6379/14").channel_prefix == "x:"


def test_a_redis_database_that_is_not_a_number_is_refused() -> None:
    for url in ("redis://127.0.0.1:6379/staging", "redis://127.0.0.1:6379/0?db=x"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"REDIS_URL": url})
        assert [problem.split(":")[0] for problem in caught.value.problems] == ["REDIS_URL"]


def secret_problems(secret: str | None) -> list[str]:
    env = PRODUCTION if secret is None else {**PRODUCTION, "SECRET_KEY": secret}
    try:
        Settings.from_env(env)
    except ConfigError as error:
        return [problem for problem in error.problems if problem.startswith("SECRET_KEY")]
    return []


@pytest.mark.parametrize(
    "secret, problem",
    [
        (None, "SECRET_KEY: not set; production needs a random secret of at least 32 bytes"),
        ("", "SECRET_KEY: not set; production needs a random secret of at least 32 bytes"),
        (DEV_SECRET_KEY, "SECRET_KEY: a known default value; set a random secret"),
        ("changeme", "SECRET_KEY: a known default value; set a random secret"),
        ("short-secret", "SECRET_KEY: must be at least 32 bytes in production"),
        ("a" * 64, f"SECRET_KEY: too predictable (one character repeated); {HINT}"),
        (
            "0123456789abcde" * 5,
            f"SECRET_KEY: too predictable (only 15 distinct characters; need 16); {HINT}",
        ),
        # 16 distinct characters, but one of them 60 times in 76: about 120 bits.
        (
            "a" * 60 + "bcdefghijklmnopq",
            f"SECRET_KEY: too predictable (about 120 bits of entropy; need 128); {HINT}",
        ),
    ],
    ids=[
        "unset",
        "empty",
        "dev default",
        "known default",
        "short",
        "one character",
        "15 distinct",
        "low entropy",
    ],
)
def test_production_refuses_weak_secrets_with_one_line(secret: str | None, problem: str) -> None:
    assert secret_problems(secret) == [problem]


def test_production_accepts_random_secrets() -> None:
    for _ in range(50):
        assert secret_problems(secrets.token_urlsafe(48)) == []
    assert secret_problems(secrets.token_urlsafe(32)) == []
    assert Settings.from_env({**PRODUCTION, "SECRET_KEY": STRONG}).is_production


def test_entropy_estimate() -> None:
    assert secret_entropy_bits("a" * 64) == 0
    assert secret_entropy_bits("ab" * 32) == pytest.approx(64)  # 1 bit a character
    assert secret_entropy_bits("abcdefghij" * 4) == pytest.approx(40 * 3.3219, rel=1e-4)
    assert secret_entropy_bits(secrets.token_urlsafe(48)) > 250


def test_weak_secrets_are_fine_outside_production() -> None:
    for env in ("dev", "test"):
        assert Settings.from_env({"APP_ENV": env, "SECRET_KEY": "a" * 64}).secret_key == "a" * 64
        assert Settings.from_env({"APP_ENV": env}).secret_key == DEV_SECRET_KEY


def test_production_refuses_every_detectable_misconfiguration() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "APP_ENV": "production",
                "SECRET_KEY": DEV_SECRET_KEY,
                "STRIPE_SECRET_KEY": "sk_live_x",
                "CORS_ORIGINS": "*",
                "CORS_ALLOW_CREDENTIALS": "true",
            }
        )
    named = [problem.split(":")[0] for problem in caught.value.problems]
    assert named == [
        "SECRET_KEY",
        "SMS_BACKEND",
        "GEMINI_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_PRICE_ID",
        "CORS_ORIGINS",
    ]
    assert "sk_live_x" not in str(caught.value)  # names the variable, never echoes a secret


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_production_processes_refuse_to_start_with_one_line_per_problem(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gemini_graphql", command],
        env={"APP_ENV": "production", "SECRET_KEY": "short-secret-value", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "gemini-graphql: invalid configuration:"
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "SECRET_KEY",
        "SMS_BACKEND",
        "GEMINI_API_KEY",
    ]
    assert "Traceback" not in result.stderr and "short-secret-value" not in result.stderr
