"""Alembic, driven from code: `gemini-graphql migrate`, the dev mode and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # gemini_graphql/


def migrations_dir() -> Path:
    """`migrations/` beside the package (a checkout) or in the working directory (the image)."""
    for candidate in (PACKAGE_DIR.parent / "migrations", Path.cwd() / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("migrations/ not found beside the package or in the working directory")


def migrate(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config
