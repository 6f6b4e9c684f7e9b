"""The Kubernetes manifests are valid Kubernetes and agree with the app they deploy.

Every manifest under k8s/ is validated against the Kubernetes API schemas that
the kubernetes-validate package ships (strict: an unknown field is an error).
The ServiceMonitor and the PrometheusRule, Prometheus Operator custom resources
that no built-in schema covers, are checked against the part of their CRDs they
use, written here; the PrometheusRule holds exactly the rules of
deploy/prometheus/alerts.yml (``make k8s-rules`` writes it).
Then the manifests are compared with the code: every ``REWARDSTREAM_*`` name is
a setting, the web port, probe and scrape paths are the worker's, the program
file is where its ConfigMap is mounted, the autoscaler's metric is one the
worker exports and it never scales past the partitions. Nothing here needs a
cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from app.assembly import load_program_setting
from app.metrics import Metrics, metric_names
from app.programs.loader import BUILTIN_DIR
from app.settings import ENV_PREFIX, Settings
from harness import k8s_rules
from tests.unit.test_deployment_files import (
    Dockerfile,
    _known_variables,
    _rewardstream_env,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# The newest Kubernetes whose schemas kubernetes-validate (constraints.txt) ships.
K8S_SCHEMA_VERSION = "1.37"
# Kinds that no built-in schema covers; each is checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The metric the autoscaler scales on (app/metrics.py, Metrics.consumer_lag).
LAG_METRIC = "rewardstream_consumer_lag_records"
# What a stop may take beyond a commit waiting for the broker: the snapshot of a
# worker at the size statefulset.yaml is sized for, saving the models, leaving the group.
SNAPSHOT_ALLOWANCE_S = 60

# The part of the ServiceMonitor CRD (monitoring.coreos.com/v1) the manifest uses, with
# the CRD's own types and patterns; any other key fails here until it is added from the CRD.
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}


def _custom_resource_schema(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus Operator resource of ``kind`` (monitoring.coreos.com/v1) with ``spec``."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": _LABELS,
                },
            },
            "spec": spec,
        },
    }


SERVICE_MONITOR_SCHEMA = _custom_resource_schema(
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "additionalProperties": False,
                "properties": {"matchLabels": _LABELS},
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                    },
                },
            },
        },
    },
)


# The part of the PrometheusRule CRD (monitoring.coreos.com/v1) the manifest uses.
_RULE = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": ["string", "integer"]},
        "for": {"type": "string", "pattern": _DURATION},
        "keep_firing_for": {"type": "string", "pattern": _DURATION},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
PROMETHEUS_RULE_SCHEMA = _custom_resource_schema(
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "rules": {"type": "array", "items": _RULE},
                    },
                },
            },
        },
    },
)
CUSTOM_SCHEMAS = {
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
}


# ---------------------------------------------------------------- reading the manifests


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One resource and the file it is in."""

    path: Path
    resource: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.resource["kind"])

    @property
    def name(self) -> str:
        return str(self.resource["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(K8S)}:{self.kind}/{self.name}"


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _manifests() -> list[Manifest]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append(Manifest(path, document))
    return found


MANIFESTS = _manifests()
BUILTIN = [manifest for manifest in MANIFESTS if manifest.kind not in CUSTOM_KINDS]
CUSTOM = [manifest for manifest in MANIFESTS if manifest.kind in CUSTOM_KINDS]


class Resources:
    """The k8s/ resources by kind and name."""

    def __init__(self, manifests: list[Manifest]) -> None:
        self.by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for manifest in manifests:
            key = (manifest.kind, manifest.name)
            assert key not in self.by_key, f"{manifest} is defined twice"
            self.by_key[key] = manifest.resource

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [resource for (k, _), resource in self.by_key.items() if k == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        if name is not None:
            assert (kind, name) in self.by_key, f"no {kind} named {name!r} in k8s/"
            return self.by_key[(kind, name)]
        (resource,) = self.of_kind(kind)
        return resource


@pytest.fixture(scope="module")
def k8s() -> Resources:
    return Resources(MANIFESTS)


def _pod(k8s: Resources) -> dict[str, Any]:
    pod: dict[str, Any] = k8s.one("StatefulSet")["spec"]["template"]["spec"]
    return pod


def _container(k8s: Resources) -> dict[str, Any]:
    (container,) = _pod(k8s)["containers"]
    return dict(container)


def _settings_configmap(k8s: Resources) -> dict[str, Any]:
    """The ConfigMap the worker takes its environment from."""
    (source,) = _container(k8s)["envFrom"]
    return k8s.one("ConfigMap", source["configMapRef"]["name"])


def _worker_env(k8s: Resources, dockerfile: Dockerfile) -> dict[str, str]:
    """The REWARDSTREAM_* variables the worker's process sees: the image's ENV, then the
    ConfigMap (envFrom), then the container's own ``env``."""
    env = dict(_rewardstream_env(dockerfile.env))
    env.update(_settings_configmap(k8s)["data"])
    for item in _container(k8s).get("env", []):
        # A value from the pod's own fields stands for one: its name, here.
        env[item["name"]] = item.get("value", "rewardstream-0")
    return _rewardstream_env(env)


def _worker_settings(k8s: Resources, dockerfile: Dockerfile) -> Settings:
    return Settings.from_env(environ=_worker_env(k8s, dockerfile))


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``2Gi``) as a number."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20}
    units |= {"Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    assert match.group(2) in units, f"unit of {value!r} not known here"
    return float(match.group(1)) * units[match.group(2)]


# ---------------------------------------------------------------- schemas


def test_manifests_were_found() -> None:
    kinds = {manifest.kind for manifest in MANIFESTS}
    expected = {"Namespace", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    expected |= {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
    assert kinds == expected


@pytest.mark.parametrize("manifest", BUILTIN, ids=str)
def test_manifest_is_valid_for_kubernetes(manifest: Manifest) -> None:
    try:
        checked = kubernetes_validate.validate(manifest.resource, K8S_SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{manifest}: {where}: {error.message}")
    assert checked == K8S_SCHEMA_VERSION


def test_only_the_custom_kinds_lack_a_builtin_schema() -> None:
    without_schema = set()
    for manifest in MANIFESTS:
        try:
            kubernetes_validate.validate(manifest.resource, K8S_SCHEMA_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.add(manifest.kind)
    assert without_schema == CUSTOM_KINDS, "a kind without a schema needs a check by hand"


def test_the_schemas_reject_what_kubernetes_would(k8s: Resources) -> None:
    """The validation above is real: a typo'd field or a wrongly typed port fails it."""
    typo = copy.deepcopy(k8s.one("StatefulSet"))
    typo["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    wrong_type = copy.deepcopy(k8s.one("StatefulSet"))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("manifest", CUSTOM, ids=str)
def test_custom_resources_have_their_crds_structure(manifest: Manifest) -> None:
    jsonschema.validate(manifest.resource, CUSTOM_SCHEMAS[manifest.kind])


def test_the_crd_checks_reject_what_the_operator_would(k8s: Resources) -> None:
    monitor = copy.deepcopy(k8s.one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    rule = copy.deepcopy(k8s.one("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    nameless = copy.deepcopy(k8s.one("PrometheusRule"))
    del nameless["spec"]["groups"][0]["rules"][0]["alert"]
    for broken in (monitor, rule, nameless):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, CUSTOM_SCHEMAS[broken["kind"]])


def test_the_prometheus_rule_holds_the_rules_of_the_rule_file(k8s: Resources) -> None:
    """A cluster with the Prometheus Operator gets every alert and recording rule that
    promtool tests in deploy/prometheus/alerts.yml, unchanged: run `make k8s-rules`
    after editing that file."""
    rule_file = ROOT / "deploy" / "prometheus" / "alerts.yml"
    groups = yaml.safe_load(rule_file.read_text(encoding="utf-8"))["groups"]
    assert k8s.one("PrometheusRule")["spec"]["groups"] == groups, "run `make k8s-rules`"
    assert k8s_rules.render(rule_file.read_text(encoding="utf-8")) == (
        K8S / "monitoring" / "prometheusrule.yaml"
    ).read_text(encoding="utf-8"), "run `make k8s-rules`"


def test_kustomization_applies_every_builtin_manifest_and_no_custom_one(k8s: Resources) -> None:
    (kustomization_file,) = _kustomizations()
    assert kustomization_file == K8S / "kustomization.yaml"
    kustomization = yaml.safe_load(kustomization_file.read_text(encoding="utf-8"))
    resources = [str(PurePosixPath(resource)) for resource in kustomization["resources"]]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    listed = {K8S / resource for resource in resources}
    assert all(path.is_file() for path in listed), "a listed resource does not exist"
    assert {manifest.path for manifest in BUILTIN} == listed
    # Applying a custom kind fails on a cluster without its CRD: those stay out.
    assert not {manifest.path for manifest in CUSTOM} & listed
    assert kustomization["namespace"] == k8s.one("Namespace")["metadata"]["name"]


# ---------------------------------------------------------------- settings


def test_manifests_name_only_real_settings() -> None:
    """Every REWARDSTREAM_* name in k8s/, comments included, is a field of Settings."""
    named = set()
    for path in K8S.rglob("*.yaml"):
        named |= set(re.findall(ENV_PREFIX + r"[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8")))
    assert named, "no setting named at all"
    assert named <= _known_variables(), f"not settings: {sorted(named - _known_variables())}"


def test_settings_configmap_holds_valid_settings(k8s: Resources, dockerfile: Dockerfile) -> None:
    data = _settings_configmap(k8s)["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    assert set(data) == set(_rewardstream_env(data)), "only REWARDSTREAM_* keys"
    for item in _container(k8s).get("env", []):
        assert item["name"] in _known_variables(), item["name"]
    settings = _worker_settings(k8s, dockerfile)  # raises SettingsError if a value is bad
    assert settings.web_host == "0.0.0.0", "the kubelet and Prometheus must reach the worker"


# ---------------------------------------------------------------- image, ports, probes


def test_each_worker_is_named_by_its_pod_so_a_restart_fences_its_predecessor(
    k8s: Resources,
) -> None:
    """A pod of the StatefulSet keeps its name across restarts: the worker's one
    transactional producer, named after it, fences the last life's at once."""
    assert k8s.one("StatefulSet")["metadata"]["name"] == "rewardstream-worker"
    named = {item["name"]: item for item in _container(k8s).get("env", [])}
    source = named["REWARDSTREAM_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert source == "metadata.name"


def test_worker_runs_the_projects_released_image(k8s: Resources) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    container = _container(k8s)
    repository, _, tag = container["image"].rpartition(":")
    assert repository.rsplit("/", 1)[-1] == project["name"]
    assert tag == project["version"], "the manifest runs the image of this version"
    assert "command" not in container, "the image's CMD runs"
    assert "args" not in container, "the image's CMD runs"


def test_web_port_probes_and_scraping_are_the_workers(
    k8s: Resources, dockerfile: Dockerfile, worker_pages: set[str]
) -> None:
    web_port = _worker_settings(k8s, dockerfile).web_port
    assert web_port in dockerfile.expose
    container = _container(k8s)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": web_port, "protocol": "TCP"}
    probes = (
        ("startupProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
    )
    for probe, path in probes:
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
        assert path in worker_pages
    annotations = k8s.one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(web_port)
    assert annotations["prometheus.io/path"] in worker_pages

    (service_port,) = k8s.one("Service")["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (web_port, port["name"])
    for monitor in k8s.of_kind("ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == service_port["name"], "ServiceMonitors name a Service port"
        assert endpoint["path"] in worker_pages


# ---------------------------------------------------------------- volumes and the program


def test_program_setting_is_the_file_the_program_configmap_mounts(
    k8s: Resources, dockerfile: Dockerfile, tmp_path: Path
) -> None:
    program = PurePosixPath(_worker_settings(k8s, dockerfile).program)
    (mount,) = [m for m in _container(k8s)["volumeMounts"] if m["mountPath"] == str(program.parent)]
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap change"
    (volume,) = [v for v in _pod(k8s)["volumes"] if v["name"] == mount["name"]]
    assert "items" not in volume["configMap"], "every key is mounted under its own name"
    data = k8s.one("ConfigMap", volume["configMap"]["name"])["data"]
    assert program.name in data, f"the program ConfigMap has no key {program.name}"

    # The worker reads the setting as a path (not a shipped program's id), and the file
    # is a valid program whose id is the file's name.
    copied = tmp_path / program.name
    copied.write_text(data[program.name], encoding="utf-8")
    assert load_program_setting(str(copied)).id == program.stem
    # The same bytes as the shipped program: their SHA-256 is the version decisions carry.
    shipped = BUILTIN_DIR / program.name
    assert data[program.name] == shipped.read_text(encoding="utf-8"), (
        f"the program ConfigMap differs from {shipped.resolve().relative_to(ROOT)}: copy it again"
    )


def test_state_volume_and_user_are_the_images(k8s: Resources, dockerfile: Dockerfile) -> None:
    statefulset = k8s.one("StatefulSet")
    data_dir = str(_worker_settings(k8s, dockerfile).data_dir)
    assert dockerfile.volumes == [data_dir]
    (mount,) = [m for m in _container(k8s)["volumeMounts"] if m["mountPath"] == data_dir]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert not mount.get("readOnly")
    security = _pod(k8s)["securityContext"]
    assert security["runAsNonRoot"] is True
    uid = dockerfile.user.split(":")[0]
    assert uid.isdigit(), "runAsNonRoot can only be verified for a numeric USER"
    assert int(uid) != 0, "the image runs as a non-root user"
    assert security["runAsUser"] == int(uid)
    assert security["fsGroup"] == int(dockerfile.user.split(":")[1]), "the volume is writable"


def test_resources_have_requests_and_limits(k8s: Resources) -> None:
    resources = _container(k8s)["resources"]
    for name in ("cpu", "memory"):
        request = _quantity(resources["requests"][name])
        limit = _quantity(resources["limits"][name])
        assert 0 < request <= limit, name
    # Memory is not overcommitted under a stateful worker: an OOM kill costs a rebalance.
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_grace_period_leaves_time_for_the_snapshot_on_stop(k8s: Resources) -> None:
    # A transaction in flight at SIGTERM may wait for the broker up to the producer's
    # request timeout (the worker keeps aiokafka's default), then the snapshot is written.
    default = inspect.signature(AIOKafkaProducer.__init__).parameters["request_timeout_ms"]
    needed = default.default / 1000 + SNAPSHOT_ALLOWANCE_S
    assert _pod(k8s)["terminationGracePeriodSeconds"] >= needed


# ---------------------------------------------------------------- autoscaling


def test_lag_metric_is_one_the_worker_exports() -> None:
    metrics = Metrics(CollectorRegistry())
    assert LAG_METRIC in metric_names(metrics.registry), (
        f"the worker exports no {LAG_METRIC} (app/metrics.py) but hpa.yaml scales on it"
    )
    # The autoscaler selects by topic and de-duplicates by partition (hpa.yaml).
    metrics.consumer_lag.labels(topic="events", partition="0").set(3)
    (family,) = [f for f in metrics.registry.collect() if f.name == LAG_METRIC]
    assert family.type == "gauge"
    (sample,) = family.samples
    assert set(sample.labels) == {"topic", "partition"}


def test_autoscaler_scales_the_workers_on_their_lag_within_the_partitions(
    k8s: Resources, dockerfile: Dockerfile
) -> None:
    settings = _worker_settings(k8s, dockerfile)
    statefulset, autoscaler = k8s.one("StatefulSet"), k8s.one("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (statefulset["apiVersion"], "StatefulSet")
    assert target["name"] == statefulset["metadata"]["name"]
    assert "replicas" not in statefulset["spec"], "the autoscaler owns the replica count"

    low, high = autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
    # More workers than partitions would sit idle.
    assert 1 <= low <= high <= settings.partitions
    budget = k8s.one("PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert low - budget >= 2, "a drain must leave the state to more than one worker"

    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == LAG_METRIC
    selector = metric["external"]["metric"]["selector"]["matchLabels"]
    assert selector == {"topic": settings.topic_events}
    assert metric["external"]["target"]["type"] == "AverageValue"
    assert _quantity(metric["external"]["target"]["averageValue"]) > 0


# ---------------------------------------------------------------- consistency


def test_resources_select_the_same_pods_in_one_namespace(k8s: Resources) -> None:
    statefulset, service = k8s.one("StatefulSet"), k8s.one("Service")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"] == selector
    assert k8s.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's service is headless"
    for monitor in k8s.of_kind("ServiceMonitor"):
        # A ServiceMonitor selects Services (by their labels), not pods.
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        assert wanted <= service["metadata"]["labels"].items()
    namespace = k8s.one("Namespace")["metadata"]["name"]
    for (kind, name), resource in k8s.by_key.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == namespace, f"{kind}/{name}"


def test_api_versions(k8s: Resources) -> None:
    expected = {
        "Namespace": "v1",
        "ConfigMap": "v1",
        "Service": "v1",
        "StatefulSet": "apps/v1",
        "PodDisruptionBudget": "policy/v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "ServiceMonitor": "monitoring.coreos.com/v1",
        "PrometheusRule": "monitoring.coreos.com/v1",
    }
    found = {kind: resource["apiVersion"] for (kind, _), resource in k8s.by_key.items()}
    assert found == expected


def test_every_mounted_volume_exists(k8s: Resources) -> None:
    pod = _pod(k8s)
    volumes = {volume["name"] for volume in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in k8s.one("StatefulSet")["spec"]["volumeClaimTemplates"]}
    for mount in _container(k8s)["volumeMounts"]:
        assert mount["name"] in volumes | claims, mount["name"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            k8s.one("ConfigMap", volume["configMap"]["name"])
