"""The cluster half of `titanium doctor`: the seed's checklist and risk table over kubectl.

`Kubectl` runs the real binary; the `check_*` functions only read its JSON, so
they are tested on recorded outputs (there is no cluster on a laptop or in CI).
"""

import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from titanium.ops.checks import Check, Status

GROUP = "cluster"
POSTGRES_POD = "postgresql-0"
WAITING_FIXES = {
    "ImagePullBackOff": "the image tag is not in the registry: build and push it "
    "(docs/delivery.md) or correct `images:` in the overlay",
    "ErrImagePull": "the image cannot be pulled: check the image name, tag and pull secret",
    "CrashLoopBackOff": "the container keeps exiting: read its last log lines above, then "
    "`titanium doctor` inside the pod (`--pod`)",
    "CreateContainerConfigError": "a ConfigMap or Secret the pod references is missing: "
    "kubectl get cm,secret -n NAMESPACE",
}


class KubectlError(Exception):
    """kubectl failed; the message is its stderr."""


class Kubectl:
    """Runs the kubectl binary and parses its JSON."""

    def __init__(self, binary: str = "kubectl", timeout: float = 20.0) -> None:
        self.binary = binary
        self.timeout = timeout

    def available(self) -> bool:
        """True when the binary is on PATH."""
        return shutil.which(self.binary) is not None

    def run(self, *args: str) -> str:
        """Run kubectl with `args`; return stdout or raise KubectlError."""
        try:
            done = subprocess.run(
                [self.binary, *args], capture_output=True, text=True, timeout=self.timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubectlError(str(exc)) from exc
        if done.returncode != 0:
            raise KubectlError(
                done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            )
        return done.stdout

    def current_context(self) -> str | None:
        """The current context, or None when none is set."""
        try:
            return self.run("config", "current-context").strip() or None
        except KubectlError:
            return None

    def get(self, kind: str, namespace: str | None = None) -> dict[str, Any]:
        """`kubectl get KIND -o json` (in a namespace when given)."""
        args = ["get", kind, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        result: dict[str, Any] = json.loads(self.run(*args))
        return result

    def last_logs(self, namespace: str, pod: str, container: str, lines: int = 5) -> str:
        """The last log lines of a container's previous run (or current, when none)."""
        for previous in (["--previous"], []):
            try:
                return self.run(
                    "logs", pod, "-n", namespace, "-c", container, f"--tail={lines}", *previous
                ).strip()
            except KubectlError:
                continue
        return ""


def check_context(context: str, expected: str | None) -> Check:
    """Name the current context: the seed's "deployed to the wrong cluster" risk."""
    if expected and context != expected:
        return Check(
            GROUP, "context", Status.FAIL, f"current context is {context!r}, expected {expected!r}",
            f"kubectl config use-context {expected}",
        )  # fmt: skip
    return Check(GROUP, "context", Status.PASS, f"current context: {context}")


def check_nodes(nodes: dict[str, Any]) -> Check:
    """Count Ready nodes (the seed expects 3 or more)."""
    items = nodes.get("items", [])
    ready = sum(
        any(c.get("type") == "Ready" and c.get("status") == "True" for c in _conditions(node))
        for node in items
    )
    detail = f"{ready}/{len(items)} nodes Ready"
    if ready == 0:
        return Check(GROUP, "nodes", Status.FAIL, detail, "kubectl describe nodes")
    if ready < len(items):
        return Check(GROUP, "nodes", Status.WARN, detail, "kubectl describe nodes")
    return Check(GROUP, "nodes", Status.PASS, detail)


def check_postgres_pod(pods: dict[str, Any], namespace: str) -> Check:
    """postgresql-0 exists, is Running and ready."""
    pod = next((p for p in pods.get("items", []) if p["metadata"]["name"] == POSTGRES_POD), None)
    if pod is None:
        return Check(
            GROUP, POSTGRES_POD, Status.FAIL, f"no pod {POSTGRES_POD} in {namespace}",
            "apply the Terraform database module (terraform/README.md)",
        )  # fmt: skip
    phase = pod.get("status", {}).get("phase", "Unknown")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in _conditions(pod))
    if phase == "Running" and ready:
        return Check(GROUP, POSTGRES_POD, Status.PASS, "Running and ready")
    return Check(
        GROUP, POSTGRES_POD, Status.FAIL, f"{phase}, {'ready' if ready else 'not ready'}",
        f"kubectl describe pod {POSTGRES_POD} -n {namespace}",
    )  # fmt: skip


def check_volume_claims(claims: dict[str, Any], storage_classes: dict[str, Any]) -> list[Check]:
    """Every PVC Bound; for a Pending one, say whether a StorageClass could bind it."""
    classes = {sc["metadata"]["name"]: sc for sc in storage_classes.get("items", [])}
    default = [
        name
        for name, sc in classes.items()
        if sc["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    checks = []
    for claim in claims.get("items", []):
        name = claim["metadata"]["name"]
        phase = claim.get("status", {}).get("phase", "Unknown")
        if phase == "Bound":
            checks.append(Check(GROUP, f"pvc {name}", Status.PASS, "Bound"))
            continue
        wanted = claim.get("spec", {}).get("storageClassName")
        if wanted and wanted not in classes:
            why = f"{phase}: StorageClass {wanted!r} does not exist"
            fix = (
                "install the Local Path Provisioner (Terraform kubernetes module, "
                "install_local_path_provisioner = true)"
            )
        elif not wanted and not default:
            why = f"{phase}: no storageClassName and no default StorageClass"
            fix = "install the Local Path Provisioner or mark a StorageClass as default"
        else:
            why = f"{phase}: StorageClass {wanted or default[0]!r} exists; waiting for binding"
            fix = (
                f"kubectl describe pvc {name} (WaitForFirstConsumer binds once a pod is scheduled)"
            )
        checks.append(Check(GROUP, f"pvc {name}", Status.FAIL, why, fix))
    if not checks:
        checks.append(
            Check(GROUP, "pvc", Status.WARN, "no PersistentVolumeClaims in the namespace")
        )
    return checks


LogReader = Callable[[str, str, str], str]


def check_pods(pods: dict[str, Any], namespace: str, logs: LogReader | None = None) -> list[Check]:
    """Pods that are not Running, with the reason and, for crashes, the last log lines."""
    checks = []
    for pod in pods.get("items", []):
        name = pod["metadata"]["name"]
        phase = pod.get("status", {}).get("phase", "Unknown")
        if phase == "Succeeded":
            continue
        for container in pod.get("status", {}).get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting")
            if not waiting:
                continue
            reason = waiting.get("reason", "Waiting")
            detail = f"container {container['name']}: {reason}"
            if reason == "CrashLoopBackOff" and logs is not None:
                tail = logs(namespace, name, container["name"])
                if tail:
                    detail += " | last log: " + " / ".join(tail.splitlines()[-5:])
            fix = WAITING_FIXES.get(reason, f"kubectl describe pod {name} -n {namespace}")
            checks.append(
                Check(
                    GROUP, f"pod {name}", Status.FAIL, detail, fix.replace("NAMESPACE", namespace)
                )
            )
        if phase not in ("Running", "Succeeded") and not any(
            c.name == f"pod {name}" for c in checks
        ):
            checks.append(
                Check(
                    GROUP,
                    f"pod {name}",
                    Status.FAIL,
                    phase,
                    f"kubectl describe pod {name} -n {namespace}",
                )
            )
    if not checks:
        checks.append(
            Check(GROUP, "pods", Status.PASS, f"{len(pods.get('items', []))} pods Running")
        )
    return checks


def cluster_checks(kubectl: Kubectl, namespace: str, expected_context: str | None) -> list[Check]:
    """Every cluster check, or one SKIP line when there is no kubectl or no context."""
    if not kubectl.available():
        return [Check(GROUP, "kubectl", Status.SKIP, "kubectl not found: cluster checks skipped")]
    context = kubectl.current_context()
    if context is None:
        return [Check(GROUP, "kubectl", Status.SKIP, "no current context: cluster checks skipped")]
    checks = [check_context(context, expected_context)]
    if checks[0].status is Status.FAIL:
        return checks
    try:
        checks.append(check_nodes(kubectl.get("nodes")))
        pods = kubectl.get("pods", namespace)
        checks.append(check_postgres_pod(pods, namespace))
        checks += check_volume_claims(kubectl.get("pvc", namespace), kubectl.get("storageclass"))
        checks += check_pods(pods, namespace, kubectl.last_logs)
    except (KubectlError, ValueError) as exc:
        checks.append(Check(GROUP, "kubectl", Status.FAIL, str(exc), "kubectl cluster-info"))
    return checks


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions", [])
    return conditions
