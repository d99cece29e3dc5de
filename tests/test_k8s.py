"""Proof of the Kubernetes manifests (k8s/) without a cluster.

Both overlays are rendered with `kubectl kustomize`; every rendered object is
validated against the OpenAPI schemas of a current Kubernetes release
(kubernetes-validate, offline); policy is checked over the rendered objects;
and each overlay is booted: the commands, arguments and environment of its
Jobs, init containers and containers start the real services as local
processes, which must become ready and serve a register -> login -> post round
trip through the gateway, with the data landing where the manifests put it.

The overlays are rendered from a clean clone (tests/support/checkout.py), as a
cluster gets them: solid-cloud through Argo CD's sops plugin from secret inputs
sealed to a throwaway age key, local with the token key pair its README makes.
"""

import asyncio
import base64
import copy
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import hcl2
import httpx
import kubernetes_validate
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Route

from support.api import register
from support.checkout import Checkout, load_all
from support.ports import free_port
from support.postgres import SharedServer
from titanium import __version__
from titanium.config import Settings
from titanium.services import registry
from titanium.web.service import install_common

pytestmark = pytest.mark.infra  # kubectl kustomize, the Kubernetes schemas

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ["local", "solid-cloud"]
TERRAFORM_MODULES = REPO / "terraform" / "modules"

IMAGE = "titanium"
# Deployment (and Service) name -> the `titanium serve` argument it must run.
SERVICES = {service.name: service.id for service in registry.SERVICES.values()}
DATA_SERVICES = {registry.service_name(service) for service in registry.DATA_SERVICES}
MIGRATION_JOB = "titanium-db-migrate"
# The monitoring component's (k8s/components/monitoring): not a Titanium process.
EXPORTER = "postgres-exporter"
MONITORING_WORKLOADS = {"solid-cloud": {EXPORTER}, "local": set()}
# Custom resources Kubernetes' own schemas do not know: tests/test_monitoring_k8s.py
# validates them, as strictly, against their CRDs.
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)
SETTINGS = {name.upper() for name in Settings.model_fields}
# `titanium serve` gives in-flight requests this long after SIGTERM (cli.py).
APP_SHUTDOWN_SECONDS = 10
KUBERNETES_VERSION = kubernetes_validate.latest_version()
RECOMMENDED = ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component")
BOOT_TIMEOUT = 30.0


# --- rendering --------------------------------------------------------------


def kustomization(directory: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(
        (directory / "kustomization.yaml").read_text(encoding="utf-8")
    )
    return parsed


@dataclass
class Overlay:
    """The objects `kubectl kustomize` renders for one overlay."""

    name: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def generated(self, kind: str, name: str) -> dict[str, Any]:
        """The object a generator made from `name` (its name carries a content hash)."""
        found = [o for o in self.of_kind(kind) if name_of(o).rpartition("-")[0] == name]
        assert len(found) == 1, f"{self.name}: {kind} {name}: {len(found)} generated"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment") + self.of_kind("Job")

    def data(self, kind: str, name: str) -> dict[str, str]:
        found = self.find(kind, name)
        assert found is not None, f"{self.name}: {kind} {name} is referenced but not rendered"
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in found.get("data", {}).items()}
        return dict(found.get("data", {}))


@pytest.fixture(scope="session")
def render(checkout: Checkout) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """The rendered overlay `name`, from the clean clone."""
    return lambda name: checkout.render(f"k8s/overlays/{name}")


def load(render: Callable[[str], subprocess.CompletedProcess[str]], name: str) -> Overlay:
    result = render(name)
    if result.returncode != 0:
        pytest.fail(f"rendering overlays/{name} failed:\n{result.stderr}", pytrace=False)
    return Overlay(name, load_all(result.stdout))


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, render: Any) -> Overlay:
    return load(render, request.param)


@pytest.fixture(scope="session")
def local(render: Any) -> Overlay:
    return load(render, "local")


@pytest.fixture(scope="session")
def solid_cloud(render: Any) -> Overlay:
    return load(render, "solid-cloud")


# --- small helpers over rendered objects -------------------------------------


def name_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def service_deployments(overlay: Overlay) -> list[dict[str, Any]]:
    """The Deployments that run Titanium's services (not the exporter)."""
    return [d for d in overlay.of_kind("Deployment") if name_of(d) in SERVICES]


def runs_titanium(container: dict[str, Any]) -> bool:
    return str(container["image"]).partition(":")[0] == IMAGE


def all_containers(overlay: Overlay) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in overlay.workloads():
        for container in containers(workload):
            yield workload, container


def where(workload: dict[str, Any], container: dict[str, Any]) -> str:
    return f"{workload['kind']} {name_of(workload)}, container {container['name']}"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selected_workloads(overlay: Overlay, selector: dict[str, Any]) -> list[str]:
    return [name_of(w) for w in overlay.workloads() if selects(selector, pod_labels(w))]


def declared_port(workload: dict[str, Any], port: int | str) -> int | None:
    """The container port a Service targetPort or probe port names, if declared."""
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for declared in container.get("ports", []):
            if port in (declared["containerPort"], declared.get("name")):
                return int(declared["containerPort"])
    return None


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value}"
    return float(match[1]) * units.get(match[2], 1)


def references(container: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key) of every ConfigMap/Secret the container's environment names."""
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            yield "ConfigMap", source["configMapRef"]["name"], None
        if "secretRef" in source:
            yield "Secret", source["secretRef"]["name"], None
    for item in container.get("env", []):
        ref = item.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            yield "ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
        if "secretKeyRef" in ref:
            yield "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]


def container_env(overlay: Overlay, container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, env overrides."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        ref = source.get("configMapRef") or source["secretRef"]
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in overlay.data(kind, ref["name"]).items()})
    for item in container.get("env", []):
        ref = item.get("valueFrom")
        if ref is None:
            env[item["name"]] = str(item.get("value", ""))
            continue
        assert set(ref) <= {"configMapKeyRef", "secretKeyRef"}, f"unsupported valueFrom {ref}"
        kind = "ConfigMap" if "configMapKeyRef" in ref else "Secret"
        key_ref = ref.get("configMapKeyRef") or ref["secretKeyRef"]
        data = overlay.data(kind, key_ref["name"])
        assert key_ref["key"] in data, f"{kind} {key_ref['name']} has no key {key_ref['key']}"
        env[item["name"]] = data[key_ref["key"]]
    return env


def served_paths() -> set[str]:
    """The operational routes every service's app really has."""
    app = Starlette()
    install_common(app, service="gateway", settings=Settings.model_construct())
    return {route.path for route in app.routes if isinstance(route, Route)}


# --- 1. rendering and 2. schema validation ----------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders(render: Any, name: str) -> None:
    result = render(name)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    deployments = {name_of(o) for o in objects if o["kind"] == "Deployment"}
    assert deployments == set(SERVICES) | MONITORING_WORKLOADS[name]


def test_objects_validate_strictly_against_the_kubernetes_schemas(overlay: Overlay) -> None:
    errors = []
    for obj in overlay.objects:
        if obj["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            at = ".".join(map(str, exc.absolute_path))
            errors.append(f"{obj['kind']} {name_of(obj)}: {at}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert not errors, "\n".join(errors)


def test_schema_validation_is_strict() -> None:
    # Guards the test above: an unknown field must be an error, not ignored.
    typo = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selectr": {"a": "b"}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


# --- 3. policy over the rendered output --------------------------------------


def test_every_container_has_requests_and_limits(overlay: Overlay) -> None:
    for workload, container in all_containers(overlay):
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request and limit, f"{where(workload, container)}: {resource} request/limit"
            assert quantity(request) <= quantity(limit), f"{where(workload, container)}"


def test_probes_point_at_paths_the_app_serves(overlay: Overlay) -> None:
    served = served_paths()
    assert {"/health", "/ready"} <= served, served
    expected = {"livenessProbe": "/health", "readinessProbe": "/ready", "startupProbe": "/health"}
    for deployment in service_deployments(overlay):
        for container in pod_spec(deployment)["containers"]:
            for probe, path in expected.items():
                if probe == "startupProbe" and probe not in container:
                    continue
                get = container.get(probe, {}).get("httpGet")
                assert get, f"{where(deployment, container)}: no HTTP {probe}"
                assert get["path"] == path, f"{where(deployment, container)}: {probe} {get}"
                assert declared_port(deployment, get["port"]), f"{probe} port {get['port']}"


def test_restricted_security_context(overlay: Overlay) -> None:
    for workload in overlay.workloads():
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert spec.get("automountServiceAccountToken") is False, name_of(workload)
        # Service links would add variables the manifests do not name.
        assert spec.get("enableServiceLinks") is False, name_of(workload)
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"))
        for container in containers(workload):
            own = container.get("securityContext", {})
            at = where(workload, container)
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, at
            assert own.get("runAsUser", pod.get("runAsUser", 1)) != 0, at
            seccomp = own.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", at
            assert own.get("allowPrivilegeEscalation") is False, at
            assert own.get("readOnlyRootFilesystem") is True, at
            assert own.get("privileged") is not True, at
            assert own.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not own.get("capabilities", {}).get("add"), at
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{at}: no writable /tmp"
            assert "emptyDir" in volumes[tmp[0]["name"]], f"{at}: /tmp is not an emptyDir"


def test_termination_grace_period_lets_requests_finish(overlay: Overlay) -> None:
    for workload in overlay.workloads():
        grace = pod_spec(workload).get("terminationGracePeriodSeconds")
        assert grace is not None, name_of(workload)
        assert grace > APP_SHUTDOWN_SECONDS, f"{name_of(workload)}: {grace}s"


def test_images_are_pinned_through_kustomize(overlay: Overlay) -> None:
    images = kustomization(K8S / "overlays" / overlay.name).get("images", [])
    assert [i["name"] for i in images] == [IMAGE], images
    # The tag names the code it was built from: the package version.
    assert images[0].get("newTag") == __version__ or images[0].get("digest"), images
    for workload, container in all_containers(overlay):
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and tag and tag != "latest"), where(workload, container)
        assert container.get("imagePullPolicy") == "IfNotPresent", where(workload, container)
    # By hand, an image is named without a tag or registry: the pin lives in a
    # kustomization's `images:` only (the overlay's, or a component's for its own).
    pinned = {
        entry["name"]
        for path in K8S.rglob("kustomization.yaml")
        for entry in kustomization(path.parent).get("images", [])
        if entry.get("newTag") or entry.get("digest")
    }
    assert IMAGE in pinned, pinned
    for path in K8S.rglob("*.yaml"):
        for image in re.findall(r"(?m)^\s*-?\s*image:\s*(\S+)", path.read_text(encoding="utf-8")):
            assert image.strip("\"'") in pinned, f"{path.relative_to(REPO)}: image {image}"


def test_commands_run_the_service_each_deployment_is_named_for(overlay: Overlay) -> None:
    for deployment in service_deployments(overlay):
        name = name_of(deployment)
        (container,) = pod_spec(deployment)["containers"]
        assert container["name"] == name, "one name per service"
        assert container["command"] == ["titanium"], name
        args = container["args"]
        assert args[:2] == ["serve", SERVICES[name]], args
        assert args[args.index("--host") + 1] == "0.0.0.0", args
        assert declared_port(deployment, int(args[args.index("--port") + 1])), args
    for workload in overlay.workloads():
        for container in pod_spec(workload).get("initContainers", []):
            assert container["command"] == ["titanium"], where(workload, container)
            assert container["args"][:2] == ["db", "upgrade"], where(workload, container)


def test_recommended_labels(overlay: Overlay) -> None:
    for obj in overlay.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "titanium", name_of(obj)
    for workload in overlay.workloads():
        for labels in (workload["metadata"]["labels"], pod_labels(workload)):
            assert all(labels.get(key) for key in RECOMMENDED), f"{name_of(workload)}: {labels}"
            assert labels["app.kubernetes.io/name"] == name_of(workload), "one name per service"


def test_each_service_selects_one_deployment_on_a_declared_port(overlay: Overlay) -> None:
    services = overlay.of_kind("Service")
    assert {name_of(s) for s in services} == set(SERVICES) | MONITORING_WORKLOADS[overlay.name]
    for service in services:
        selector = service["spec"].get("selector")
        assert selector, f"Service {name_of(service)} has no selector"
        chosen = selected_workloads(overlay, {"matchLabels": selector})
        assert chosen == [name_of(service)], f"Service {name_of(service)} selects {chosen}"
        deployment = overlay.find("Deployment", chosen[0])
        assert deployment is not None
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert declared_port(deployment, target), f"{name_of(service)}: targetPort {target}"


def missing_references(overlay: Overlay) -> list[str]:
    """Every ConfigMap/Secret (key), claim or volume source a workload names but is not rendered
    (the Secrets Terraform owns excepted: they are in the cluster, not in the overlay)."""
    missing = []
    for workload, container in all_containers(overlay):
        for kind, name, key in references(container):
            if (kind, name) in terraform_owned():
                continue
            found = overlay.find(kind, name)
            if found is None or (key is not None and key not in found.get("data", {})):
                missing.append(f"{where(workload, container)}: {kind} {name} key {key}")
    for workload in overlay.workloads():
        for volume in pod_spec(workload).get("volumes", []):
            for kind, field_name, ref_key in (
                ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName"),
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
            ):
                if field_name in volume and not overlay.find(kind, volume[field_name][ref_key]):
                    missing.append(f"{name_of(workload)}: volume {volume['name']} -> {kind}")
    return missing


def test_every_reference_names_a_rendered_object(overlay: Overlay) -> None:
    assert not missing_references(overlay), "\n".join(missing_references(overlay))


def test_a_key_the_secret_lacks_is_a_missing_reference(solid_cloud: Overlay) -> None:
    objects = copy.deepcopy(solid_cloud.objects)
    broken = Overlay(solid_cloud.name, objects)
    secret = name_of(broken.generated("Secret", "titanium-secrets"))
    deployment = broken.find("Deployment", "user-service")
    assert deployment is not None
    pod_spec(deployment)["containers"][0]["env"].append(
        {"name": "JWT_ISSUER", "valueFrom": {"secretKeyRef": {"name": secret, "key": "NOT_THERE"}}}
    )
    assert missing_references(broken) == [
        f"Deployment user-service, container user-service: Secret {secret} key NOT_THERE"
    ]


def test_every_variable_is_a_setting_the_code_reads(overlay: Overlay) -> None:
    # A misspelt name is not an error to Kubernetes or pydantic: the service would
    # silently run on a default. Every name must be a field of titanium.config.Settings.
    # The exporter is not Titanium and reads its own variables; Grafana's
    # dashboards are ConfigMaps no container reads.
    read: set[str] = set()
    for workload, container in all_containers(overlay):
        read |= {name for kind, name, _ in references(container) if kind == "ConfigMap"}
        if not runs_titanium(container):
            continue
        unknown = set(container_env(overlay, container)) - SETTINGS
        assert not unknown, f"{where(workload, container)}: not settings: {sorted(unknown)}"
    for config_map in overlay.of_kind("ConfigMap"):
        if name_of(config_map) in read:
            assert set(config_map["data"]) <= SETTINGS, config_map["data"]
        else:
            assert config_map["metadata"]["labels"].get("grafana_dashboard") == "1", config_map


def test_every_secret_key_is_used_and_only_where_needed(overlay: Overlay) -> None:
    holders: dict[str, set[str]] = {}
    for workload, container in all_containers(overlay):
        for kind, name, key in references(container):
            if kind == "Secret" and (kind, name) not in terraform_owned():
                keys = [key] if key else list(overlay.data("Secret", name))
                for each in keys:
                    holders.setdefault(each, set()).add(name_of(workload))
    for secret in overlay.of_kind("Secret"):
        unused = set(secret["data"]) - set(holders)
        assert not unused, f"Secret {name_of(secret)} provisions unused keys {unused}"
    # Only auth-service can mint tokens; only the table owners reach the database.
    assert holders.get("JWT_PRIVATE_KEY") == {"auth-service"}, holders
    assert holders.get("POSTGRES_PASSWORD", set()) <= DATA_SERVICES | {MIGRATION_JOB}, holders
    # Every service makes or accepts internal calls; the migration needs no token.
    assert holders.get("INTERNAL_TOKEN") == set(SERVICES), holders


def test_resources_and_generators_are_kept_apart() -> None:
    # ConfigMaps and Secrets come from generators only, so none is defined twice.
    for path in K8S.rglob("kustomization.yaml"):
        for entry in kustomization(path.parent).get("resources", []):
            target = path.parent / entry
            if target.is_file():
                kinds = {d["kind"] for d in yaml.safe_load_all(target.read_text()) if d}
                assert not kinds & {"ConfigMap", "Secret"}, f"{target}: {kinds}"


def hcl(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    with path.open(encoding="utf-8") as handle:
        return dict(hcl2.load(handle, serialization_options=options))


def terraform_default(module: str, variable: str) -> Any:
    blocks = hcl(TERRAFORM_MODULES / module / "variables.tf")["variable"]
    (found,) = [b[variable] for b in blocks if variable in b]
    return found["default"]


def terraform_database() -> dict[str, Any]:
    """The PostgreSQL pod labels, port and Service name of terraform/modules/database."""
    module = hcl(TERRAFORM_MODULES / "database" / "main.tf")
    local: dict[str, Any] = {}
    for block in module["locals"]:
        local.update(block)

    def resolve(value: Any) -> str:
        return re.sub(r"\$\{local\.(\w+)\}", lambda m: str(local[m[1]]), str(value))

    return {
        "labels": {k: resolve(v) for k, v in local["selector"].items()},
        "port": int(local["port"]),
        "service": resolve(local["service_name"]),
        "secret": resolve(local["secret_name"]),
    }


def terraform_owned() -> set[tuple[str, str]]:
    """The objects workloads may name that Terraform, not the overlay, provides."""
    return {("Secret", terraform_database()["secret"])}


def test_only_the_exporter_reads_the_database_secret(overlay: Overlay) -> None:
    # The database's own Secret (its superuser) is for the exporter only; the
    # services and the Job use titanium-secrets.
    readers = {
        name_of(workload)
        for workload, container in all_containers(overlay)
        for kind, name, _ in references(container)
        if (kind, name) in terraform_owned()
    }
    assert readers == MONITORING_WORKLOADS[overlay.name], readers


def test_solid_cloud_uses_the_seed_configuration(solid_cloud: Overlay) -> None:
    for obj in solid_cloud.objects:
        assert obj["metadata"].get("namespace") == "titanium-prod", name_of(obj)
    assert not solid_cloud.of_kind("Namespace"), "Terraform owns the namespace"
    assert not solid_cloud.of_kind("StatefulSet"), "Terraform owns PostgreSQL"
    config = solid_cloud.generated("ConfigMap", "titanium-database")
    database = terraform_database()
    assert {
        k: config["data"].get(k) for k in ("USE_POSTGRES", "POSTGRES_HOST", "POSTGRES_PORT")
    } == {
        "USE_POSTGRES": "true",
        "POSTGRES_HOST": database["service"],
        "POSTGRES_PORT": str(database["port"]),
    }
    assert config["data"]["POSTGRES_DB"] == "titanium"
    secret = solid_cloud.generated("Secret", "titanium-secrets")
    expected = {"POSTGRES_USER", "POSTGRES_PASSWORD", "JWT_PRIVATE_KEY", "JWT_PUBLIC_KEY"}
    expected.add("INTERNAL_TOKEN")
    assert set(secret["data"]) == expected


def autoscalers(overlay: Overlay) -> dict[str, dict[str, Any]]:
    """Deployment name -> the HorizontalPodAutoscaler that scales it."""
    found: dict[str, dict[str, Any]] = {}
    for hpa in overlay.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1", target
        assert target["name"] not in found, f"two autoscalers for {target['name']}"
        found[target["name"]] = hpa
    return found


def test_solid_cloud_autoscales_every_service_behind_disruption_budgets(
    solid_cloud: Overlay,
) -> None:
    budgets = solid_cloud.of_kind("PodDisruptionBudget")
    scaled = autoscalers(solid_cloud)
    assert set(scaled) == set(SERVICES), "every service is stateless"
    for deployment in service_deployments(solid_cloud):
        name = name_of(deployment)
        # The autoscaler owns the count: a fixed one would be reset on every apply.
        assert "replicas" not in deployment["spec"], name
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        covering = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(covering) == 1, f"{name}: {len(covering)} budgets"
        min_available = covering[0]["spec"].get("minAvailable")
        assert min_available == 1, covering[0]["spec"]
        spec = scaled[name]["spec"]
        # A drain may take one pod while the budget still holds: one more than it needs.
        assert spec["minReplicas"] >= min_available + 1, f"{name}: {spec}"
        assert spec["maxReplicas"] >= spec["minReplicas"], f"{name}: {spec}"
        (metric,) = spec["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu", metric
        assert metric["resource"]["target"]["type"] == "Utilization", metric
        # Utilization is a share of the request: every container needs one.
        for container in containers(deployment):
            request = container.get("resources", {}).get("requests", {}).get("cpu")
            assert request, f"{where(deployment, container)}: no CPU request for the HPA"


def test_autoscaler_checks_catch_a_budget_violation(solid_cloud: Overlay) -> None:
    # Guards the test above: an autoscaler allowed down to the budget fails it.
    objects = copy.deepcopy(solid_cloud.objects)
    broken = Overlay(solid_cloud.name, objects)
    autoscalers(broken)["user-service"]["spec"]["minReplicas"] = 1
    with pytest.raises(AssertionError, match="user-service"):
        test_solid_cloud_autoscales_every_service_behind_disruption_budgets(broken)
    objects = copy.deepcopy(solid_cloud.objects)
    broken = Overlay(solid_cloud.name, objects)
    deployment = broken.find("Deployment", "blog-service")
    assert deployment is not None
    del pod_spec(deployment)["containers"][0]["resources"]["requests"]["cpu"]
    with pytest.raises(AssertionError, match="no CPU request"):
        test_solid_cloud_autoscales_every_service_behind_disruption_budgets(broken)


def test_solid_cloud_lets_only_table_owners_reach_postgresql(solid_cloud: Overlay) -> None:
    database = terraform_database()
    # Policies add up: the overlay's for the table owners and the Job, the
    # monitoring component's for its exporter.
    policies = [
        p
        for p in solid_cloud.of_kind("NetworkPolicy")
        if selects(p["spec"]["podSelector"], database["labels"])
    ]
    assert {name_of(p) for p in policies} == {
        "postgresql-clients",
        "postgres-exporter-to-postgresql",
    }
    allowed: set[str] = set()
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        for rule in spec["ingress"]:
            assert [p["port"] for p in rule["ports"]] == [database["port"]], rule
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"only pods of this namespace: {peer}"
                allowed |= set(selected_workloads(solid_cloud, peer["podSelector"]))
    assert allowed == DATA_SERVICES | {MIGRATION_JOB, EXPORTER}


# Who may open a connection to whom inside titanium-prod, and on which port:
# "outside" is any client that is not a pod (an Ingress controller's node port, a
# load balancer); "prometheus" is kube-prometheus-stack's Prometheus, a pod in the
# namespace `monitoring` (k8s/components/monitoring/networkpolicy.yaml).
OUTSIDE = "outside"
PROMETHEUS = "prometheus"
INTENDED_PATHS = {
    *{(source, "api-gateway", 8000) for source in [OUTSIDE, *SERVICES, MIGRATION_JOB, EXPORTER]},
    ("api-gateway", "auth-service", 8002),
    ("api-gateway", "user-service", 8001),
    ("api-gateway", "blog-service", 8005),
    ("auth-service", "user-service", 8001),
    ("blog-service", "user-service", 8001),
    (PROMETHEUS, "api-gateway", 8000),
    (PROMETHEUS, "auth-service", 8002),
    (PROMETHEUS, "user-service", 8001),
    (PROMETHEUS, "blog-service", 8005),
    (PROMETHEUS, EXPORTER, 9187),
}


@dataclass(frozen=True)
class Client:
    """Who opens a connection: a pod (its namespace's and its own labels) or, with
    neither, a client that is not a pod."""

    namespace: dict[str, str] | None
    labels: dict[str, str] | None


def namespace_labels(name: str) -> dict[str, str]:
    # The label the API server sets on every namespace.
    return {"kubernetes.io/metadata.name": name}


def peer_admits(peer: dict[str, Any], client: Client, own_namespace: str) -> bool:
    """Whether a NetworkPolicy `from` entry admits the client."""
    if "ipBlock" in peer:
        # Taken as admitting clients that are not pods only, which is all an
        # address block can be relied on for.
        return client.labels is None
    if client.namespace is None or client.labels is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], client.namespace)
    else:
        in_namespace = client.namespace == namespace_labels(own_namespace)
    return in_namespace and selects(peer.get("podSelector", {}), client.labels)


def admitted(overlay: Overlay, client: Client, target: dict[str, Any], port: int) -> bool:
    """Kubernetes' rule: a pod no Ingress policy selects takes every connection; one that
    some select takes those that at least one of their rules allows."""
    own_namespace = target["metadata"].get("namespace", "default")
    policies = [
        p["spec"]
        for p in overlay.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod_labels(target))
    ]
    if not policies:
        return True
    for spec in policies:
        for rule in spec.get("ingress", []):
            ports = [declared_port(target, p["port"]) for p in rule.get("ports", [])]
            if rule.get("ports") and port not in ports:
                continue
            if "from" not in rule or any(
                peer_admits(p, client, own_namespace) for p in rule["from"]
            ):
                return True
    return False


def reachable(
    overlay: Overlay, sources: dict[str, Client], targets: list[dict[str, Any]] | None = None
) -> set[Any]:
    """Every (source, target, container port) connection the policies allow.

    The targets are the overlay's Deployments unless given (pod templates with ports).
    """
    paths = set()
    for target in overlay.of_kind("Deployment") if targets is None else targets:
        for container in pod_spec(target)["containers"]:
            for declared in container.get("ports", []):
                port = declared["containerPort"]
                for source, client in sources.items():
                    if admitted(overlay, client, target, port):
                        paths.add((source, name_of(target), port))
    return paths


def own_pod(overlay: Overlay, labels: dict[str, str]) -> Client:
    namespace = overlay.of_kind("Deployment")[0]["metadata"]["namespace"]
    return Client(namespace_labels(namespace), labels)


def test_solid_cloud_lets_each_service_be_reached_only_by_its_callers(
    solid_cloud: Overlay,
) -> None:
    sources = {name_of(w): own_pod(solid_cloud, pod_labels(w)) for w in solid_cloud.workloads()}
    sources[OUTSIDE] = Client(None, None)
    sources[PROMETHEUS] = Client(
        namespace_labels("monitoring"), {"app.kubernetes.io/name": "prometheus"}
    )
    assert reachable(solid_cloud, sources) == INTENDED_PATHS
    # Any other pod, even one labelled as Titanium's or as Prometheus, reaches
    # nothing but the gateway.
    strangers = {
        "unlabelled": own_pod(solid_cloud, {}),
        "stranger": own_pod(
            solid_cloud,
            {"app.kubernetes.io/name": "debug", "app.kubernetes.io/part-of": "titanium"},
        ),
        "prometheus-elsewhere": own_pod(solid_cloud, {"app.kubernetes.io/name": "prometheus"}),
        "prometheus-in-default": Client(
            namespace_labels("default"), {"app.kubernetes.io/name": "prometheus"}
        ),
        "grafana": Client(namespace_labels("monitoring"), {"app.kubernetes.io/name": "grafana"}),
    }
    assert reachable(solid_cloud, strangers) == {(name, "api-gateway", 8000) for name in strangers}


def test_the_reachability_model_follows_kubernetes_rules(solid_cloud: Overlay) -> None:
    # Without the default deny, auth-service would still be guarded by its own
    # policy, but a workload no policy selects would take every connection.
    objects = [
        o for o in solid_cloud.objects
        if not (o["kind"] == "NetworkPolicy" and name_of(o) == "user-service-ingress")
    ]  # fmt: skip
    opened = Overlay(solid_cloud.name, objects)
    sources = {"stranger": own_pod(solid_cloud, {"app.kubernetes.io/name": "x"})}
    # The default deny still selects user-service: nobody gets in.
    assert ("stranger", "user-service", 8001) not in reachable(opened, sources)
    # Without it (and the scrape policy, which selects user-service too), anyone.
    without_deny = Overlay(
        solid_cloud.name,
        [o for o in objects if name_of(o) not in {"titanium-default-deny", "prometheus-scrape"}],
    )
    assert ("stranger", "user-service", 8001) in reachable(without_deny, sources)
    # A namespaceSelector and a podSelector in one peer: both must match.
    peer = {
        "namespaceSelector": {"matchLabels": namespace_labels("monitoring")},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    prometheus = Client(namespace_labels("monitoring"), {"app.kubernetes.io/name": "prometheus"})
    assert peer_admits(peer, prometheus, "titanium-prod")
    assert not peer_admits(peer, Client(prometheus.namespace, {}), "titanium-prod")
    assert not peer_admits({"podSelector": peer["podSelector"]}, prometheus, "titanium-prod"), (
        "a podSelector alone admits pods of the policy's own namespace only"
    )


def pod_resources(workload: dict[str, Any]) -> dict[str, float]:
    """What one pod counts against a ResourceQuota (init containers run alone)."""
    spec, total = pod_spec(workload), {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            key = f"{kind}.{resource}"
            running = sum(quantity(c["resources"][kind][resource]) for c in spec["containers"])
            init = [
                quantity(c["resources"][kind][resource]) for c in spec.get("initContainers", [])
            ]
            total[key] = max([running, *init])
    return total


def namespace_use(overlay: Overlay, replicas: Callable[[dict[str, Any]], int]) -> dict[str, float]:
    """What PostgreSQL (Terraform's defaults) and the overlay's workloads, at
    `replicas(deployment)` pods each, count against the namespace quota."""
    database = terraform_default("database", "resources")
    used = {
        "pods": 1.0,
        "requests.cpu": quantity(database["request_cpu"]),
        "requests.memory": quantity(database["request_memory"]),
        "limits.cpu": quantity(database["limit_cpu"]),
        "limits.memory": quantity(database["limit_memory"]),
    }
    for workload in overlay.workloads():
        count = replicas(workload) if workload["kind"] == "Deployment" else 1
        used["pods"] += count
        for key, value in pod_resources(workload).items():
            used[key] += count * value
    return used


def surge(deployment: dict[str, Any]) -> int:
    strategy = deployment["spec"]["strategy"]
    return int(strategy["rollingUpdate"]["maxSurge"]) if strategy["type"] == "RollingUpdate" else 0


def over_quota(used: dict[str, float]) -> dict[str, tuple[float, float]]:
    quota = {k: quantity(v) for k, v in terraform_default("kubernetes", "resource_quota").items()}
    return {k: (v, quota[k]) for k, v in used.items() if k in quota and v > quota[k]}


def test_solid_cloud_fits_the_namespace_quota_during_a_rollout(solid_cloud: Overlay) -> None:
    # A pod the quota refuses never starts: with maxUnavailable 0 a rollout
    # waits for room. The Job and PostgreSQL (Terraform's defaults) always count.
    scaled = autoscalers(solid_cloud)

    def fixed(deployment: dict[str, Any]) -> int:
        return int(deployment["spec"].get("replicas", 1))

    def at_min(deployment: dict[str, Any]) -> int:
        hpa = scaled.get(name_of(deployment))
        return int(hpa["spec"]["minReplicas"]) if hpa else fixed(deployment)

    def at_max(deployment: dict[str, Any]) -> int:
        hpa = scaled.get(name_of(deployment))
        return int(hpa["spec"]["maxReplicas"]) if hpa else fixed(deployment)

    # At the usual scale every Deployment surges at once, as a sync rolls them all.
    rollout = namespace_use(solid_cloud, lambda d: at_min(d) + surge(d))
    assert not over_quota(rollout), f"over the quota (used, hard): {over_quota(rollout)}"
    # Scaled out to every maxReplicas, a rollout still gets one surge pod at a
    # time (the largest), so it proceeds Deployment by Deployment instead of stalling.
    largest = max(pod_resources(d)["limits.cpu"] for d in solid_cloud.of_kind("Deployment"))
    scaled_out = namespace_use(solid_cloud, at_max)
    scaled_out["limits.cpu"] += largest
    scaled_out["pods"] += 1
    assert not over_quota(scaled_out), f"over the quota (used, hard): {over_quota(scaled_out)}"


def test_solid_cloud_migrates_once_per_rollout_in_a_job(solid_cloud: Overlay) -> None:
    (job,) = solid_cloud.of_kind("Job")
    assert name_of(job) == MIGRATION_JOB
    (container,) = pod_spec(job)["containers"]
    assert [*container["command"], *container["args"]] == ["titanium", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}
    for deployment in solid_cloud.of_kind("Deployment"):
        # Replicas never migrate, so they cannot race each other.
        assert not pod_spec(deployment).get("initContainers"), name_of(deployment)


def test_local_keeps_sqlite_on_volumes_with_one_writer(local: Overlay) -> None:
    config = local.generated("ConfigMap", "titanium-database")
    assert config["data"] == {"USE_POSTGRES": "false"}
    for name in DATA_SERVICES:
        deployment = local.find("Deployment", name)
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 1, name
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        for container in containers(deployment):
            path = container_env(local, container).get("DATABASE_PATH")
            assert path, f"{where(deployment, container)}: no DATABASE_PATH"
            mounts = [
                m
                for m in container.get("volumeMounts", [])
                if path.startswith(m["mountPath"].rstrip("/") + "/")
            ]
            assert mounts, f"{where(deployment, container)}: {path} is on no volume"
            claim = volumes[mounts[0]["name"]].get("persistentVolumeClaim")
            assert claim, f"{where(deployment, container)}: {path} is not on a PVC"
            assert local.find("PersistentVolumeClaim", claim["claimName"])
        (init,) = pod_spec(deployment)["initContainers"]
        assert init["args"] == ["db", "upgrade", "--service", SERVICES[name]], init["args"]


def test_local_exposes_the_gateway_on_a_node_port(local: Overlay) -> None:
    for service in local.of_kind("Service"):
        expected = "NodePort" if name_of(service) == "api-gateway" else "ClusterIP"
        assert service["spec"].get("type") == expected, name_of(service)


def test_readme_names_real_paths() -> None:
    text = (K8S / "README.md").read_text(encoding="utf-8")
    for overlay in OVERLAYS:
        assert f"kubectl apply -k k8s/overlays/{overlay}" in text, overlay
    for path in set(re.findall(r"\b(?:k8s|terraform)/[\w./-]*[\w]", text)):
        if "/secrets" not in path or path.endswith(".example"):
            assert (REPO / path).exists(), path


# --- 4. booted from the manifests ---------------------------------------------


@dataclass
class Network:
    """Cluster addresses -> local ones: Services to 127.0.0.1 and free ports."""

    namespace: str
    # host -> (address, {port: local port})
    hosts: dict[str, tuple[str, dict[int, int]]]
    # (workload, containerPort) -> local port
    container_ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def short(self, host: str) -> str | None:
        for suffix in (f".{self.namespace}.svc.cluster.local", f".{self.namespace}.svc", ""):
            name = host.removesuffix(suffix)
            if name in self.hosts:
                return name
        return None

    def rewrite(self, value: str) -> str:
        host = self.short(value)
        if host is not None:
            return self.hosts[host][0]
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            host = self.short(parts.hostname)
            if host is not None:
                address, ports = self.hosts[host]
                port = parts.port or (443 if parts.scheme == "https" else 80)
                assert port in ports, f"{value}: {host} exposes no port {port}"
                return urlunsplit(parts._replace(netloc=f"{address}:{ports[port]}"))
        return value


def cluster_network(overlay: Overlay, external: dict[str, tuple[str, dict[int, int]]]) -> Network:
    namespace = overlay.of_kind("Deployment")[0]["metadata"].get("namespace", "default")
    network = Network(namespace, dict(external))
    for deployment in overlay.of_kind("Deployment"):
        for container in pod_spec(deployment)["containers"]:
            for port in container.get("ports", []):
                network.container_ports[(name_of(deployment), port["containerPort"])] = free_port()
    for service in overlay.of_kind("Service"):
        (target,) = selected_workloads(overlay, {"matchLabels": service["spec"]["selector"]})
        workload = overlay.find("Deployment", target)
        assert workload is not None
        ports = {}
        for port in service["spec"]["ports"]:
            container_port = declared_port(workload, port.get("targetPort", port["port"]))
            assert container_port is not None
            ports[port["port"]] = network.container_ports[(target, container_port)]
        network.hosts[name_of(service)] = ("127.0.0.1", ports)
    return network


@dataclass
class LocalPods:
    """Runs the containers of rendered workloads as local processes."""

    overlay: Overlay
    network: Network
    overrides: dict[str, str]
    root: Path
    volumes: dict[tuple[str, ...], Path] = field(default_factory=dict)
    processes: list[tuple[str, subprocess.Popen[bytes], int]] = field(default_factory=list)

    def volume(self, *key: str) -> Path:
        if key not in self.volumes:
            path = self.root / "volumes" / "-".join(key)
            path.mkdir(parents=True)
            self.volumes[key] = path
        return self.volumes[key]

    def mounts(self, workload: dict[str, Any], container: dict[str, Any]) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        result = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                path = self.volume("pvc", volume["persistentVolumeClaim"]["claimName"])
            else:
                assert "emptyDir" in volume, f"unsupported volume {volume}"
                path = self.volume("emptyDir", name_of(workload), mount["name"])
            result[mount["mountPath"].rstrip("/")] = path / mount.get("subPath", "")
        return result

    def command(
        self, workload: dict[str, Any], container: dict[str, Any]
    ) -> tuple[list[str], dict[str, str], Path]:
        """Argv, environment and working directory of a container, mapped to this host."""
        command, args = container["command"], list(container.get("args", []))
        assert command[0] == "titanium", f"{where(workload, container)}: {command}"
        mounts = sorted(self.mounts(workload, container).items(), key=lambda m: -len(m[0]))

        def local(value: str) -> str:
            assert "$(" not in value, f"{where(workload, container)}: $(VAR) is not resolved here"
            for mount, path in mounts:
                if value == mount or value.startswith(mount + "/"):
                    return str(path) + value[len(mount) :]
            return self.network.rewrite(value)

        for index, arg in enumerate(args[:-1]):
            if arg == "--host":
                args[index + 1] = "127.0.0.1"
            if arg == "--port":
                key = (name_of(workload), int(args[index + 1]))
                assert key in self.network.container_ports, f"{key} listens on an undeclared port"
                args[index + 1] = str(self.network.container_ports[key])
        env = {name: local(value) for name, value in container_env(self.overlay, container).items()}
        env.update({k: v for k, v in self.overrides.items() if k in env})
        argv = [sys.executable, "-m", "titanium", *command[1:], *map(local, args)]
        # The container's working directory: a default relative path lands here,
        # never in the repository.
        workdir = self.volume("workdir", name_of(workload))
        return argv, {"PATH": os.environ["PATH"], **env}, workdir

    def log(self, workload: dict[str, Any], container: dict[str, Any]) -> Path:
        return self.root / "logs" / f"{name_of(workload)}-{container['name']}.log"

    def run_to_completion(self, workload: dict[str, Any], container: dict[str, Any]) -> None:
        argv, env, cwd = self.command(workload, container)
        result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{where(workload, container)} failed:\n{output}"

    def start(self, workload: dict[str, Any], container: dict[str, Any]) -> None:
        argv, env, cwd = self.command(workload, container)
        log = self.log(workload, container)
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        self.processes.append((where(workload, container), process, grace))

    def stop(self) -> list[str]:
        """SIGTERM everything, SIGKILL what outlives its grace period; return those."""
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        started, killed = time.monotonic(), []
        for name, process, grace in self.processes:
            try:
                process.wait(max(0.1, started + grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed.append(name)
        return killed


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_ready(pods: LocalPods, deadline: float) -> None:
    """Poll each container's readiness probe, as the kubelet would, then its liveness."""
    for deployment in service_deployments(pods.overlay):
        for container in pod_spec(deployment)["containers"]:
            port = declared_port(deployment, container["readinessProbe"]["httpGet"]["port"])
            assert port is not None
            base = f"http://127.0.0.1:{pods.network.container_ports[(name_of(deployment), port)]}"
            ready = base + container["readinessProbe"]["httpGet"]["path"]
            log = pods.log(deployment, container)
            while http_status(ready) != 200:
                exited = [n for n, p, _ in pods.processes if p.poll() is not None]
                if exited or time.monotonic() > deadline:
                    pytest.fail(
                        f"{where(deployment, container)} not ready at {ready} "
                        f"(exited: {exited}):\n{log.read_text(errors='replace')[-3000:]}",
                        pytrace=False,
                    )
                time.sleep(0.1)
            live = base + container["livenessProbe"]["httpGet"]["path"]
            assert http_status(live) == 200, live


def claim(overlay: Overlay, name: str) -> str:
    deployment = overlay.find("Deployment", name)
    assert deployment is not None
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if "persistentVolumeClaim" in v]
    return str(volume["persistentVolumeClaim"]["claimName"])


def sqlite_rows(directory: Path, sql: str, value: str) -> int:
    found = 0
    for path in directory.glob("*.db"):
        with sqlite3.connect(path) as connection:
            found += connection.execute(sql, (value,)).fetchone()[0]
    return found


async def postgres_rows(env: dict[str, str], sql: str, value: str) -> int:
    connection = await asyncpg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        database=env["POSTGRES_DB"],
    )
    try:
        return int(await connection.fetchval(sql.replace("?", "$1"), value))
    finally:
        await connection.close()


def test_boots_from_the_manifests(
    overlay: Overlay, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Start every workload of the overlay exactly as its manifests say, locally."""
    external: dict[str, tuple[str, dict[int, int]]] = {}
    overrides: dict[str, str] = {}
    database: dict[str, str] = {}
    if overlay.name == "solid-cloud":
        # PostgreSQL is Terraform's: here a throwaway database on the local server.
        postgres: SharedServer = request.getfixturevalue("postgres")
        database = postgres.env(postgres.create_database())
        external["postgresql-service"] = (
            database["POSTGRES_HOST"],
            {terraform_database()["port"]: int(database["POSTGRES_PORT"])},
        )
        overrides = {k: database[k] for k in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PORT")}
        if postgres.url.password:
            overrides["POSTGRES_PASSWORD"] = postgres.url.password
    pods = LocalPods(overlay, cluster_network(overlay, external), overrides, tmp_path)
    try:
        for job in overlay.of_kind("Job"):
            for container in containers(job):
                pods.run_to_completion(job, container)
        # The exporter is not Titanium's: tests/test_monitoring_live.py runs one.
        for deployment in service_deployments(overlay):
            for container in pod_spec(deployment).get("initContainers", []):
                pods.run_to_completion(deployment, container)
        for deployment in service_deployments(overlay):
            for container in pod_spec(deployment)["containers"]:
                pods.start(deployment, container)
        wait_ready(pods, time.monotonic() + BOOT_TIMEOUT)

        address, ports = pods.network.hosts["api-gateway"]
        with httpx.Client(base_url=f"http://{address}:{ports[8000]}", timeout=30) as client:
            user = register(client)
            title = f"booted from {overlay.name} {uuid.uuid4().hex[:8]}"
            created = client.post(
                "/blog/api/posts",
                json={"title": title, "content": "from the manifests"},
                headers=user["headers"],
            )
            assert created.status_code == 201, created.text
            read = client.get(f"/blog/api/posts/{created.json()['id']}")
            assert read.status_code == 200, read.text
            assert read.json()["author"] == user["username"]

        # The data is where the manifests put it, not in some default location.
        users_sql = "SELECT count(*) FROM users WHERE username = ?"
        posts_sql = "SELECT count(*) FROM posts WHERE title = ?"
        if overlay.name == "solid-cloud":
            assert asyncio.run(postgres_rows(database, users_sql, user["username"])) == 1
            assert asyncio.run(postgres_rows(database, posts_sql, title)) == 1
        else:
            users_volume = pods.volume("pvc", claim(overlay, "user-service"))
            blog_volume = pods.volume("pvc", claim(overlay, "blog-service"))
            assert sqlite_rows(users_volume, users_sql, user["username"]) == 1
            assert sqlite_rows(blog_volume, posts_sql, title) == 1
    finally:
        killed = pods.stop()
    assert not killed, f"did not stop within terminationGracePeriodSeconds: {killed}"


def test_the_cluster_logs_json_lines_and_local_keeps_the_line_format(
    solid_cloud: Overlay, local: Overlay
) -> None:
    for overlay, wanted in ((solid_cloud, "json"), (local, None)):
        for workload, container in all_containers(overlay):
            if name_of(workload) not in SERVICES:
                continue  # not a Titanium service (the monitoring component's exporter)
            found = container_env(overlay, container).get("LOG_FORMAT")
            assert found == wanted, f"{where(workload, container)}: LOG_FORMAT={found}"
