"""The deployment files agree with the code they deploy.

Dockerfile, docker-compose.yml and deploy/prometheus/prometheus.yml name
settings, ports, paths and commands that are defined in Python. These tests read
those files and compare them with ``app.settings``, the CLI and the worker's web
pages, so renaming a setting, a topic, a port or a page in the code fails here
instead of on someone's machine. Nothing here needs Docker. The Kubernetes
manifests in k8s/ are checked in test_k8s.py, with helpers from here.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app import cli
from app.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Compose services that run the rewardstream image with its settings.
APP_SERVICES = ("topics", "worker")


# ---------------------------------------------------------------- readers


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _known_variables() -> set[str]:
    return {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}


def _as_env(environment: Mapping[str, Any] | list[str] | None) -> dict[str, str]:
    """A compose ``environment`` (mapping or list of K=V) as the strings a process sees."""
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _rewardstream_env(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}


@dataclasses.dataclass(frozen=True)
class Dockerfile:
    env: dict[str, str]
    expose: list[int]
    volumes: list[str]
    user: str
    cmd: list[str]


def _dockerfile() -> Dockerfile:
    """The few instructions these tests need, from a plain single-stage Dockerfile."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    expose: list[int] = []
    volumes: list[str] = []
    user = ""
    cmd: list[str] = []

    def expand(value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "ENV":
            words = shlex.split(rest)
            if "=" in words[0]:
                for word in words:
                    key, _, value = word.partition("=")
                    env[key] = value
            else:  # legacy `ENV KEY value`
                env[words[0]] = " ".join(words[1:])
        elif instruction == "EXPOSE":
            expose += [int(port.split("/")[0]) for port in rest.split()]
        elif instruction == "VOLUME":
            volumes += yaml.safe_load(rest) if rest.startswith("[") else rest.split()
        elif instruction == "USER":
            user = expand(rest)
        elif instruction == "CMD":
            cmd = yaml.safe_load(rest)  # exec form, a JSON list
    return Dockerfile(env, expose, volumes, user, cmd)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = _yaml(COMPOSE_FILE)
    return loaded


def _answered_pages() -> set[str]:
    """The paths the worker's web server really answers (started on a free port, no Kafka)."""
    from prometheus_client import CollectorRegistry

    from streams.web import PAGES, WebServer

    server = WebServer("127.0.0.1", 0, CollectorRegistry(), list).start()
    try:
        answered = set()
        for page in [*PAGES, "/not-a-page"]:
            url = f"http://127.0.0.1:{server.port}{page}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        answered.add(page)
            except urllib.error.HTTPError:
                pass
        return answered
    finally:
        server.stop()


def _service_env(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    return _as_env(compose["services"][service].get("environment"))


def _container_settings(
    compose: Mapping[str, Any], dockerfile: Dockerfile, service: str
) -> Settings:
    """Settings as the service's container builds them: image ENV, then compose's."""
    return Settings.from_env(environ={**dockerfile.env, **_service_env(compose, service)})


def _ports(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """A service's short-syntax ports as (host ip, host port, container port)."""
    published = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        published.append((host_ip, int(parts[-2]), int(parts[-1])))
    return published


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's bind mounts of repository paths, as container path -> host path."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """Kafka ``NAME://host:port,...`` as name -> (host, port)."""
    parsed = {}
    for listener in value.split(","):
        name, _, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        parsed[name] = (host, int(port))
    return parsed


def _cli_runs(argv: list[str]) -> bool:
    """Whether ``argv`` is a `rewardstream` command line the CLI accepts."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    if argv[0] not in scripts:
        return False
    return hasattr(cli._parser().parse_args(argv[1:]), "run")


# ---------------------------------------------------------------- settings names and values


def test_compose_sets_only_real_settings_with_valid_values(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    known = _known_variables()
    for service in APP_SERVICES:
        env = _rewardstream_env(_service_env(compose, service))
        assert env, f"compose service {service} sets no {ENV_PREFIX}* variables"
        assert set(env) <= known, f"{service}: not settings: {sorted(set(env) - known)}"
        _container_settings(compose, dockerfile, service)  # raises SettingsError if invalid
    for name, service in compose["services"].items():
        unknown = set(_rewardstream_env(_as_env(service.get("environment")))) - known
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"


def test_dockerfile_env_is_real_settings_reachable_from_outside(dockerfile: Dockerfile) -> None:
    env = _rewardstream_env(dockerfile.env)
    assert set(env) <= _known_variables(), f"not settings: {sorted(set(env) - _known_variables())}"
    settings = Settings.from_env(environ=env)
    assert settings.web_host == "0.0.0.0", "a worker on 127.0.0.1 is unreachable from outside"
    assert dockerfile.volumes == [str(settings.data_dir)], "the state directory is the volume"


def test_compose_worker_uses_the_default_topic_names(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    topic_variables = {
        ENV_PREFIX + field.name.upper()
        for field in dataclasses.fields(Settings)
        if field.name.startswith("topic_")
    }
    for service in APP_SERVICES:
        missing = topic_variables - set(_service_env(compose, service))
        assert not missing, f"{service} leaves topic names implicit: {sorted(missing)}"
        settings = _container_settings(compose, dockerfile, service)
        assert settings.topic_names() == Settings().topic_names()


def test_topics_job_and_worker_share_their_settings(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    topics, worker = (_container_settings(compose, dockerfile, s) for s in APP_SERVICES)
    assert topics.bootstrap_servers == worker.bootstrap_servers
    assert topics.topic_names() == worker.topic_names()
    assert (topics.partitions, topics.replication_factor) == (
        worker.partitions,
        worker.replication_factor,
    )


# ---------------------------------------------------------------- ports and addresses


def test_dockerfile_exposes_the_web_port(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    image_port = Settings.from_env(environ=_rewardstream_env(dockerfile.env)).web_port
    assert dockerfile.expose == [image_port]
    assert _container_settings(compose, dockerfile, "worker").web_port in dockerfile.expose


def test_compose_publishes_the_worker_web_port_and_checks_health(
    compose: dict[str, Any], dockerfile: Dockerfile, worker_pages: set[str]
) -> None:
    web_port = _container_settings(compose, dockerfile, "worker").web_port
    worker = compose["services"]["worker"]
    assert [(host, inside) for _, host, inside in _ports(worker)] == [(web_port, web_port)]
    (url,) = re.findall(r"https?://[^\s'\"]+", " ".join(worker["healthcheck"]["test"]))
    checked = urlsplit(url)
    assert (checked.hostname, checked.port, checked.path) == ("127.0.0.1", web_port, "/health")
    assert checked.path in worker_pages


def test_prometheus_scrapes_the_worker_web_port(
    compose: dict[str, Any], dockerfile: Dockerfile, worker_pages: set[str]
) -> None:
    web_port = _container_settings(compose, dockerfile, "worker").web_port
    mounted = _mounts(compose["services"]["prometheus"])
    config = _yaml(ROOT / mounted["/etc/prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") in worker_pages
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    (target,) = [t for static in job["static_configs"] for t in static["targets"]]
    assert target == f"worker:{web_port}", "compose service `worker` on its web port"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    prometheus = _mounts(compose["services"]["prometheus"])
    # The image reads this path by default; a mount elsewhere would be ignored.
    assert (ROOT / prometheus["/etc/prometheus/prometheus.yml"]).is_file()
    grafana = _mounts(compose["services"]["grafana"])
    for source in grafana.values():
        assert (ROOT / source).is_dir(), f"grafana mounts missing {source}"
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    (datasource,) = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus_port = _ports(compose["services"]["prometheus"])[0][2]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = _yaml(provisioning / "dashboards" / "rewardstream.yml")["providers"]
    assert provider["options"]["path"] in grafana, "dashboards folder is mounted there"


def test_worker_reaches_kafka_through_an_advertised_listener(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    kafka = compose["services"]["kafka"]
    env = _as_env(kafka["environment"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]

    bootstrap = _container_settings(compose, dockerfile, "worker").bootstrap_servers
    host, port = advertised[internal]
    assert bootstrap == f"{host}:{port}", "the worker must use the in-network listener"
    assert host in {"kafka", kafka.get("hostname")}
    assert listeners[internal][1] == port

    # The other advertised listener is for the host, where the CLI's default applies.
    (external,) = set(advertised) - {internal}
    ext_host, ext_port = advertised[external]
    assert f"{ext_host}:{ext_port}" == Settings().bootstrap_servers
    assert ("127.0.0.1", ext_port, listeners[external][1]) in _ports(kafka)
    assert all(ip == "127.0.0.1" for ip, _, _ in _ports(kafka)), "Kafka stays on loopback"

    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller not in advertised
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        f"{env['KAFKA_NODE_ID']}@kafka:{listeners[controller][1]}"
    )
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics are created on purpose"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_compose_kafka_is_the_version_the_local_broker_runs(compose: dict[str, Any]) -> None:
    image, _, tag = compose["services"]["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert tag == Settings().kafka_version


# ---------------------------------------------------------------- commands and start order


def test_image_and_compose_commands_exist(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    assert dockerfile.cmd == ["rewardstream", "worker"]
    assert _cli_runs(dockerfile.cmd)
    assert "command" not in compose["services"]["worker"], "the worker runs the image's CMD"
    topics_command = compose["services"]["topics"]["command"]
    assert topics_command == ["rewardstream", "topics", "create"]
    assert _cli_runs(topics_command)


def test_compose_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    worker_needs = services["worker"]["depends_on"]["topics"]["condition"]
    assert worker_needs == "service_completed_successfully"
    assert services["topics"]["build"] == services["worker"]["build"] == "."


def test_image_program_is_a_shipped_program_copied_where_the_setting_points() -> None:
    from app.programs import load_program
    from app.programs.loader import BUILTIN_DIR

    text = DOCKERFILE.read_text(encoding="utf-8")
    source = BUILTIN_DIR.resolve().relative_to(ROOT).as_posix()
    copied = re.search(rf"^COPY {re.escape(source)}/? (\S+)$", text, re.MULTILINE)
    assert copied, f"the image must ship the programs folder, {source}"
    program = _dockerfile().env["REWARDSTREAM_PROGRAM"]
    assert program.startswith(copied.group(1).rstrip("/") + "/")
    shipped = BUILTIN_DIR / program.removeprefix(copied.group(1).rstrip("/") + "/")

    assert load_program(shipped).id == "retail-loyalty"
