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
NEEDED = f"production needs a random secret of at least 32 bytes; {HINT}"


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
    ("url", "database"),
    [
        ("redis://127.0.0.1:6379/0", 0),
        ("redis://127.0.0.1:6379/13", 13),
        ("redis://127.0.0.1:6379", 0),
        ("redis://127.0.0.1:6379/", 0),
        ("rediss://:pw@redis.internal:6380/2", 2),
        ("redis://127.0.0.1:6379/1?db=7", 7),  # the query wins, as in redis-py
        ("unix:///run/redis/redis.sock", 0),
        ("unix:///run/redis/redis.sock?db=5", 5),
    ],
)
def test_channel_names_carry_the_database_number(url: str, database: int) -> None:
    """Channels are per server, keys per database: the same REDIS_PREFIX on different
    databases of one server is still two sets of channels."""
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.channel_prefix == f"gemini-graphql:db{database}:"
    assert settings.redis_names.key("x") == "gemini-graphql:x"  # keys: the database is theirs
    assert redis_database(url) == parse_url(url).get("db", 0)  # the database redis-py uses


def test_the_channel_names_follow_the_url() -> None:
    """Derived when asked, not stored: settings copied with another REDIS_URL (the dev
    server's embedded Redis, the benchmarks) get that database's channels."""
    assert Settings().channel_prefix == "gemini-graphql:db0:"
    chosen = Settings(redis_prefix="x")
    assert replace(chosen, redis_url="redis://127.0.0.1:6379/14").channel_prefix == "x:db14:"


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
        (None, f"SECRET_KEY: not set; {NEEDED}"),
        ("", f"SECRET_KEY: not set; {NEEDED}"),
        ("   ", f"SECRET_KEY: not set; {NEEDED}"),
        (DEV_SECRET_KEY, f"SECRET_KEY: not set (only dev has a default key); {NEEDED}"),
        ("changeme", f"SECRET_KEY: a known default value; {NEEDED}"),
        ("short-secret", f"SECRET_KEY: must be at least 32 bytes in production; {HINT}"),
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
        "blank",
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


def test_an_unset_key_says_so_however_production_is_reached() -> None:
    """Settings made in code (or copied to production with `replace`) hold the dev key when
    nothing set one: that is reported as not set, with what to set, never as a default."""
    for settings in (
        Settings(app_env=AppEnv.PRODUCTION),
        replace(Settings(), app_env=AppEnv.PRODUCTION),
    ):
        [problem] = [line for line in settings.problems() if line.startswith("SECRET_KEY")]
        assert problem.startswith("SECRET_KEY: not set") and HINT in problem
        assert "known default" not in problem


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("SECRET_KEY", "change-me-to-a-random-secret", HINT),
        ("GEMINI_API_KEY", "change-me-to-your-gemini-api-key", "Gemini API key"),
        ("SMS_WEBHOOK_URL", "change-me-to-your-sms-gateway-url", "SMS gateway"),
        ("SMS_WEBHOOK_TOKEN", "CHANGE-ME", "SMS gateway"),
        ("DATABASE_URL", "postgresql://gemini:change-me@postgres:5432/gemini", "POSTGRES_PASSWORD"),
        ("STRIPE_SECRET_KEY", "sk_live_change-me", "set a real value or leave it empty"),
        ("CORS_ORIGINS", "https://app.example.com, https://change-me.example", "a real value"),
    ],
    ids=[
        "secret key",
        "gemini key",
        "sms url",
        "sms token in capitals",
        "database password",
        "stripe key",
        "one of the origins",
    ],
)
def test_production_refuses_a_placeholder_left_from_env_example(
    name: str, value: str, hint: str
) -> None:
    """.env.example's change-me-... values are refused in production, one line naming the
    variable and what to put there (the value itself is not echoed)."""
    env = {
        **PRODUCTION,
        "SECRET_KEY": STRONG,
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "STRIPE_PRICE_ID": "price_x",
        "STRIPE_SUCCESS_URL": "https://app.example.com/ok?session_id={CHECKOUT_SESSION_ID}",
        "STRIPE_CANCEL_URL": "https://app.example.com/cancel",
        name: value,
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    [problem] = caught.value.problems
    assert problem.startswith(f"{name}: still the placeholder from .env.example; ")
    assert hint in problem and value not in problem
    # Outside production a placeholder is just a value (dev and test never read .env).
    assert Settings.from_env({**env, "APP_ENV": "test"}).app_env is AppEnv.TEST


def test_a_placeholder_is_a_word_of_its_own() -> None:
    env = {**PRODUCTION, "SECRET_KEY": STRONG}
    for url in ("https://exchange-meetings.example/sms", "https://sms.example/change-mexico"):
        assert Settings.from_env({**env, "SMS_WEBHOOK_URL": url}).sms_webhook_url == url
    for url in ("https://sms.change-me.example/", "https://x.example/?to=CHANGE-ME"):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, "SMS_WEBHOOK_URL": url})


def test_placeholders_are_named_by_the_variables_from_env_reads() -> None:
    """A placeholder is reported under its field's name upper-cased: that must be the
    variable from_env reads it from."""
    from dataclasses import fields
    from pathlib import Path

    from gemini_graphql import config

    source = Path(config.__file__).read_text()
    for field in fields(Settings):
        assert f'"{field.name.upper()}"' in source, field.name


def test_production_refuses_the_dev_store() -> None:
    env = {**PRODUCTION, "SECRET_KEY": STRONG, "DATABASE_URL": "sqlite:///dev.sqlite3"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.problems == [
        "DATABASE_URL: SQLite is the dev mode's store; production needs a postgresql:// URL"
    ]


def test_production_with_stripe_refuses_the_localhost_return_pages() -> None:
    env = {
        **PRODUCTION,
        "SECRET_KEY": STRONG,
        "STRIPE_SECRET_KEY": "sk_live_x",
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "STRIPE_PRICE_ID": "price_x",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "STRIPE_SUCCESS_URL",
        "STRIPE_CANCEL_URL",
    ]
    ok = Settings.from_env(
        {
            **env,
            "STRIPE_SUCCESS_URL": "https://app.example.com/ok?session_id={CHECKOUT_SESSION_ID}",
            "STRIPE_CANCEL_URL": "https://app.example.com/cancel",
        }
    )
    assert ok.payments_enabled
    # Without Stripe the (unused) defaults are fine.
    assert Settings.from_env({**PRODUCTION, "SECRET_KEY": STRONG}).is_production


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
        "STRIPE_SUCCESS_URL",
        "STRIPE_CANCEL_URL",
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


def test_serve_runs_web_concurrency_processes_unless_workers_says() -> None:
    from gemini_graphql.cli import parse_args

    assert Settings.from_env({}).web_concurrency == 1
    assert Settings.from_env({"WEB_CONCURRENCY": "4"}).web_concurrency == 4
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        Settings.from_env({"WEB_CONCURRENCY": "0"})
    assert parse_args(["serve"]).workers is None  # then the setting decides
    assert parse_args(["serve", "--workers", "2"]).workers == 2


def test_metrics_settings() -> None:
    assert Settings.from_env({"METRICS_PORT": "9108"}).metrics_port == 9108
    assert Settings.from_env({"METRICS_PORT": "0"}).metrics_port == 0
    with pytest.raises(ConfigError, match="METRICS_PORT: must differ from PORT"):
        Settings.from_env({"METRICS_PORT": "8000", "PORT": "8000"})
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "70000"})
    production = Settings(app_env=AppEnv.PRODUCTION, metrics_token="short")
    assert any(
        problem.startswith("METRICS_TOKEN: at least 24") for problem in production.problems()
    )
    long_enough = replace(production, metrics_token=secrets.token_urlsafe(32))
    assert not any("METRICS_TOKEN" in problem for problem in long_enough.problems())
