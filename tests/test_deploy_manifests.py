"""The deployment manifests (deploy/kubernetes, deploy/ecs, render.yaml, fly.toml,
railway.json), checked against the code without any platform: every variable they set is one
Settings reads, every command they run parses as a `gemini-graphql` command, every probe path
is a route of the app, and the Kubernetes objects fit together."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from gemini_graphql.app.http_app import create_app
from gemini_graphql.cli import API_SHUTDOWN_SECONDS, parse_args
from gemini_graphql.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
ECS = ROOT / "deploy" / "ecs"
MANIFESTS = sorted(
    [
        *KUBERNETES.glob("*.yaml"),
        *ECS.glob("*.json"),
        *(ROOT / "deploy").glob("*.json"),
        ROOT / "render.yaml",
        ROOT / "fly.toml",
        ROOT / "railway.json",
    ]
)
JOB_TIMEOUT = Settings().worker_job_timeout_seconds
# A production configuration but for what a manifest sets (secrets come from elsewhere).
PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "k" * 16 + "3xAmple-only-Not-A-Real-Key-0123456789",
    "GEMINI_API_KEY": "example-gemini-key",
    "SMS_BACKEND": "webhook",
    "SMS_WEBHOOK_URL": "https://sms.example.com/send",
}
SIGKILL_MARGIN = 5  # seconds beyond the api's longest stop, for the lifespan's clean-up


def api_stop_seconds(env: Mapping[str, str]) -> float:
    """The longest an api takes from SIGTERM to exit in production with `env` set: the drain's
    grace (DRAIN_GRACE_SECONDS, as Settings reads it with its production default), then up
    to API_SHUTDOWN_SECONDS for open requests."""
    settings = Settings.from_env({**PRODUCTION, **{k: str(v) for k, v in env.items()}})
    assert settings.is_production
    return settings.drain_grace_seconds + API_SHUTDOWN_SECONDS


def load(path: Path) -> list[Any]:
    """The documents a file holds (a YAML file may hold several)."""
    if path.suffix == ".toml":
        return [tomllib.loads(path.read_text())]
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kubernetes_objects() -> Iterator[dict[str, Any]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from load(path)


def k8s(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        o for o in kubernetes_objects() if (o["kind"], o["metadata"]["name"]) == (kind, name)
    ]
    return found


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


class Recorder(dict[str, str]):
    """An empty environment that notes every name asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return default


def settings_variables() -> set[str]:
    env = Recorder()
    with contextlib.suppress(ConfigError):  # an empty environment is not a valid one
        Settings.from_env(env)
    return env.asked


def ecs_tasks() -> list[dict[str, Any]]:
    return [load(path)[0] for path in sorted(ECS.glob("*.json"))]


def variables_set() -> dict[str, set[str]]:
    """Every environment variable each manifest sets, by file."""
    found: dict[str, set[str]] = {}
    for obj in kubernetes_objects():
        names = found.setdefault(f"k8s {obj['kind']} {obj['metadata']['name']}", set())
        names |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
        if "template" in obj.get("spec", {}):
            names |= {e["name"] for c in containers(obj) for e in c.get("env", [])}
    render = load(ROOT / "render.yaml")[0]
    found["render.yaml"] = {e["key"] for s in render["services"] for e in s.get("envVars", [])}
    found["fly.toml"] = set(load(ROOT / "fly.toml")[0].get("env", {}))
    for task in ecs_tasks():
        found[task["family"]] = {
            e["name"]
            for c in task["containerDefinitions"]
            for e in c.get("environment", []) + c.get("secrets", [])
        }
    return found


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command a manifest runs, as the process gets it. Kubernetes
    `args` and ECS `command` follow the image's ENTRYPOINT (gemini-graphql). The others are
    whole command lines, which a platform may run as they are or hand to the ENTRYPOINT:
    both ways are listed (cli.parse_args drops the repeated name)."""
    found: list[tuple[str, list[str]]] = []

    def line(where: str, words: list[str]) -> None:
        assert words[0] == "gemini-graphql", f"{where}: {words}"
        found.append((where, words[1:]))
        found.append((f"{where} (after the ENTRYPOINT)", words))

    for obj in kubernetes_objects():
        if "template" in obj.get("spec", {}):
            for c in containers(obj):
                found.append((obj["metadata"]["name"], c["args"]))
                for probe in ("livenessProbe", "readinessProbe"):
                    if "exec" in c.get(probe, {}):
                        line(f"{obj['metadata']['name']} {probe}", c[probe]["exec"]["command"])
    render = load(ROOT / "render.yaml")[0]
    for service in render["services"]:
        for key in ("dockerCommand", "preDeployCommand"):
            if key in service:
                line(f"render {service['name']} {key}", shlex.split(service[key]))
    fly = load(ROOT / "fly.toml")[0]
    line("fly release_command", shlex.split(fly["deploy"]["release_command"]))
    for name, command in fly["processes"].items():
        line(f"fly process {name}", shlex.split(command))
    for path in (ROOT / "railway.json", ROOT / "deploy" / "railway-worker.json"):
        deploy = load(path)[0]["deploy"]
        line(f"{path.name} startCommand", shlex.split(deploy["startCommand"]))
        for command in deploy.get("preDeployCommand", []):
            line(f"{path.name} preDeployCommand", shlex.split(command))
    for task in ecs_tasks():
        for c in task["containerDefinitions"]:
            found.append((task["family"], c["command"]))
            check = c.get("healthCheck", {}).get("command", [])
            if check[1:2] == ["gemini-graphql"]:
                line(f"{task['family']} healthCheck", check[1:])
    return found


def probe_paths() -> list[tuple[str, str]]:
    found = []
    for obj in kubernetes_objects():
        if "template" in obj.get("spec", {}):
            for c in containers(obj):
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if "httpGet" in c.get(probe, {}):
                        found.append(
                            (f"{obj['metadata']['name']} {probe}", c[probe]["httpGet"]["path"])
                        )
    for service in load(ROOT / "render.yaml")[0]["services"]:
        if "healthCheckPath" in service:
            found.append((f"render {service['name']}", service["healthCheckPath"]))
    fly = load(ROOT / "fly.toml")[0]
    for check in [*fly["http_service"].get("checks", []), *fly.get("checks", {}).values()]:
        found.append(("fly", check["path"]))
    found.append(("railway", load(ROOT / "railway.json")[0]["deploy"]["healthcheckPath"]))
    for task in ecs_tasks():
        for c in task["containerDefinitions"]:
            for word in c.get("healthCheck", {}).get("command", []):
                found += [(task["family"], path) for path in re.findall(r"/health[\w/]*", word)]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_parses(path: Path) -> None:
    assert load(path), f"{path} is empty"


def test_every_variable_set_is_one_settings_reads() -> None:
    known = settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WORKER_JOB_TIMEOUT_SECONDS"} <= known
    unknown = {where: names - known for where, names in variables_set().items() if names - known}
    assert not unknown, f"variables no setting reads: {unknown}"


def test_every_command_is_a_real_cli_command() -> None:
    found = commands()
    assert ["worker", "--check"] in [argv for _, argv in found]
    assert ["migrate"] in [argv for _, argv in found]
    for where, argv in found:
        try:
            parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `gemini-graphql {shlex.join(argv)}` does not parse")


def test_every_probe_path_is_a_route() -> None:
    routes = {route.path for route in create_app(Settings()).routes}
    found = probe_paths()
    assert {path for _, path in found} >= {"/health/live", "/health/ready"}
    missing = [(where, path) for where, path in found if path not in routes]
    assert not missing, f"probe paths the app does not serve: {missing}"


def test_kubernetes_objects_are_complete_and_listed() -> None:
    for obj in kubernetes_objects():
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
    kustomization = load(KUBERNETES / "kustomization.yaml")[0]
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_base() -> None:
    """`kubectl kustomize` (offline) renders every object, the image set by `images:`."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rendered = [doc for doc in yaml.safe_load_all(built) if doc]
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert names == {(o["kind"], o["metadata"]["name"]) for o in kubernetes_objects()}
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gemini-graphql"
        if "template" in obj.get("spec", {}):
            assert {c["image"] for c in containers(obj)} == {"gemini-graphql:latest"}


def test_kubernetes_selectors_fit_together() -> None:
    for obj in kubernetes_objects():
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]
    api_labels = k8s("Deployment", "gemini-graphql-api")["spec"]["template"]["metadata"]["labels"]
    worker = k8s("Deployment", "gemini-graphql-worker")["spec"]["template"]["metadata"]["labels"]
    service = k8s("Service", "gemini-graphql-api")["spec"]["selector"]
    pdb = k8s("PodDisruptionBudget", "gemini-graphql-api")
    assert service.items() <= api_labels.items() and not service.items() <= worker.items()
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == service
    hpa = k8s("HorizontalPodAutoscaler", "gemini-graphql-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gemini-graphql-api")


def test_kubernetes_probes_resources_and_grace_periods() -> None:
    api = k8s("Deployment", "gemini-graphql-api")
    worker = k8s("Deployment", "gemini-graphql-worker")
    (api_container,) = containers(api)
    (worker_container,) = containers(worker)
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert worker_container["livenessProbe"]["exec"]["command"][1:] == ["worker", "--check"]
    for c in (api_container, worker_container):
        assert {"requests", "limits"} <= c["resources"].keys()
    worker_grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert worker_grace >= JOB_TIMEOUT + 10
    assert k8s("Job", "gemini-graphql-migrate")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["migrate"]


def test_other_platforms_give_the_worker_time_to_finish_a_reply() -> None:
    assert load(ROOT / "fly.toml")[0]["kill_timeout"] >= JOB_TIMEOUT + 10
    stop = {t["family"]: t["containerDefinitions"][0].get("stopTimeout") for t in ecs_tasks()}
    assert stop["gemini-graphql-worker"] >= JOB_TIMEOUT + 10
    render = {s["name"]: s for s in load(ROOT / "render.yaml")[0]["services"]}
    assert render["gemini-graphql-worker"]["maxShutdownDelaySeconds"] >= JOB_TIMEOUT + 10
    railway_worker = load(ROOT / "deploy" / "railway-worker.json")[0]["deploy"]
    assert railway_worker["drainingSeconds"] >= JOB_TIMEOUT + 10


def test_every_platform_lets_the_api_drain_then_finish_open_requests() -> None:
    """From SIGTERM to SIGKILL each platform waits longer than the api's drain (not ready,
    still serving) and its graceful shutdown after it, with the variables it sets."""
    configmap = k8s("ConfigMap", "gemini-graphql")["data"]
    api_pod = k8s("Deployment", "gemini-graphql-api")["spec"]["template"]["spec"]
    (ecs,) = [t for t in ecs_tasks() if t["family"] == "gemini-graphql-api"]
    ecs_api = ecs["containerDefinitions"][0]
    render = {s["name"]: s for s in load(ROOT / "render.yaml")[0]["services"]}
    render_api = render["gemini-graphql-api"]
    render_env = {e["key"]: e["value"] for e in render_api["envVars"] if "value" in e}
    fly = load(ROOT / "fly.toml")[0]
    compose = load(ROOT / "compose.yaml")[0]["services"]["api"]
    grace = re.fullmatch(r"(\d+)s", compose["stop_grace_period"])
    assert grace, compose["stop_grace_period"]
    example = dict(
        re.findall(r"^(DRAIN_GRACE_SECONDS)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    )
    platforms = {
        "kubernetes": (api_pod["terminationGracePeriodSeconds"], configmap),
        "ecs": (ecs_api["stopTimeout"], {e["name"]: e["value"] for e in ecs_api["environment"]}),
        "render": (render_api["maxShutdownDelaySeconds"], render_env),
        "fly": (fly["kill_timeout"], fly.get("env", {})),
        "railway": (load(ROOT / "railway.json")[0]["deploy"]["drainingSeconds"], {}),
        "compose": (int(grace.group(1)), example),  # .env.example is compose's .env
    }
    short = {
        name: (seconds, api_stop_seconds(env))
        for name, (seconds, env) in platforms.items()
        if seconds < api_stop_seconds(env) + SIGKILL_MARGIN
    }
    assert not short, f"grace periods (given, the api's stop) too short: {short}"
    assert api_stop_seconds({}) > API_SHUTDOWN_SECONDS  # production drains by default


def test_ecs_logs_to_cloudwatch_and_takes_secrets_by_reference() -> None:
    for task in ecs_tasks():
        for c in task["containerDefinitions"]:
            assert c["logConfiguration"]["logDriver"] == "awslogs"
            assert "SECRET_KEY" not in {e["name"] for e in c["environment"]}
            for secret in c["secrets"]:
                assert secret["valueFrom"].startswith(("arn:aws:secretsmanager:", "arn:aws:ssm:"))


def test_the_example_secret_is_refused_until_filled_in() -> None:
    """ConfigMap + example Secret is a complete production configuration, except that
    production refuses its change-me placeholders."""
    env = {**k8s("ConfigMap", "gemini-graphql")["data"]}
    env |= k8s("Secret", "gemini-graphql")["stringData"]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    for name in ("DATABASE_URL", "SECRET_KEY", "GEMINI_API_KEY", "SMS_WEBHOOK_URL"):
        assert f"{name}: still the placeholder" in str(refused.value)
    filled = {
        **env,
        "DATABASE_URL": "postgresql://gemini:s3cret@postgres:5432/gemini",
        "SECRET_KEY": "k" * 16 + "3xAmple-only-Not-A-Real-Key-0123456789",
        "GEMINI_API_KEY": "example-gemini-key",
        "SMS_WEBHOOK_URL": "https://sms.example.com/send",
    }
    assert Settings.from_env(filled).is_production
