"""Dockerfile and compose.yaml, checked as far as can be without Docker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gemini_graphql.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


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
