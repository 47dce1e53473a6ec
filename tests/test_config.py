"""Settings from the environment: defaults, readable errors, production refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gemini_graphql.config import DEV_SECRET_KEY, AppEnv, ConfigError, Settings

STRONG = "k" * 40


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.app_env is AppEnv.DEV
    assert settings.access_token_expire_minutes == 60
    assert (settings.basic_daily_limit, settings.pro_daily_limit) == (5, 1000)


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "APP_ENV": "test",
            "DATABASE_URL": "postgresql://u:p@db:5432/app",
            "PORT": "9000",
            "DEBUG": "yes",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "BASIC_DAILY_LIMIT": "7",
        }
    )
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
            }
        )
    named = {problem.split(":")[0] for problem in caught.value.problems}
    assert named == {"APP_ENV", "PORT", "ACCESS_TOKEN_EXPIRE_MINUTES", "DEBUG", "REDIS_URL", "DATABASE_URL"}


@pytest.mark.parametrize("secret", ["", "short-secret", DEV_SECRET_KEY, "changeme"])
def test_production_refuses_weak_secrets(secret: str) -> None:
    env = {
        "APP_ENV": "production",
        "SMS_BACKEND": "webhook",
        "SMS_WEBHOOK_URL": "https://sms.internal/",
        "GEMINI_API_KEY": "key",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "SECRET_KEY": secret})
    assert any(problem.startswith("SECRET_KEY") for problem in caught.value.problems)
    assert Settings.from_env({**env, "SECRET_KEY": STRONG}).is_production


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
        "SECRET_KEY", "SMS_BACKEND", "GEMINI_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_PRICE_ID", "CORS_ORIGINS"
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
    assert [line.strip().split(":")[0] for line in lines[1:]] == ["SECRET_KEY", "SMS_BACKEND", "GEMINI_API_KEY"]
    assert "Traceback" not in result.stderr and "short-secret-value" not in result.stderr
