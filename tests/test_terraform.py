"""Offline proof of the Terraform tree: no terraform binary, no network.

The HCL is parsed with python-hcl2 and its expressions are read as strings;
references are found with regular expressions. checkov supplies the security
scan. Constants below are the application's contract (ARCHITECTURE.md and the
seed's ConfigMap/Secret), which the Terraform must honour.
"""

import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

pytestmark = pytest.mark.infra  # the Terraform tree, checkov

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"
MODULES = TERRAFORM / "modules"
ENVIRONMENT = TERRAFORM / "environments" / "solid-cloud"
TFVARS_EXAMPLE = ENVIRONMENT / "terraform.tfvars.example"
K8S = REPO / "k8s"
OVERLAY = K8S / "overlays" / "solid-cloud"

NAMESPACE = "titanium-prod"
SERVICE = "postgresql-service"
PORT = 5432
DATABASE = "titanium"
SECRET_KEYS = {"POSTGRES_USER", "POSTGRES_PASSWORD"}
APP_SECRET = "titanium-secrets"  # owned by Kustomize, never by Terraform

MODULE_NAMES = ["network", "kubernetes", "database"]
MODULE_FILES = ["versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md"]
MODULE_META_ARGUMENTS = {"source", "version", "count", "for_each", "providers", "depends_on"}
SECRET_NAME = re.compile(r"password|secret|api_key|token", re.IGNORECASE)

# Strings without quotes and no __is_block__ markers: plain Python values.
HCL_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


def parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle, serialization_options=HCL_OPTIONS)
    return parsed


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def config_dirs() -> list[Path]:
    return sorted({p.parent for p in tf_files()})


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@dataclass(frozen=True)
class Config:
    """The blocks of one Terraform directory (a module or an environment)."""

    path: Path
    variables: dict[str, Any]
    outputs: dict[str, Any]
    locals: dict[str, Any]
    modules: dict[str, Any]
    resources: dict[str, Any]  # "type.name" -> body
    data: dict[str, Any]  # "type.name" -> body
    terraform: list[dict[str, Any]]

    @property
    def required_providers(self) -> dict[str, Any]:
        return {
            name: spec
            for block in self.terraform
            for providers in block.get("required_providers", [])
            for name, spec in providers.items()
        }

    def module_config(self, name: str) -> "Config":
        return load_config((self.path / self.modules[name]["source"]).resolve())


@cache
def load_config(directory: Path) -> Config:
    blocks: defaultdict[str, list[Any]] = defaultdict(list)
    for path in sorted(directory.glob("*.tf")):
        for kind, entries in parse(path).items():
            blocks[kind].extend(entries)

    def labelled(kind: str) -> dict[str, Any]:
        return {name: body for entry in blocks[kind] for name, body in entry.items()}

    def typed(kind: str) -> dict[str, Any]:
        return {
            f"{type_}.{name}": body
            for entry in blocks[kind]
            for type_, named in entry.items()
            for name, body in named.items()
        }

    return Config(
        path=directory,
        variables=labelled("variable"),
        outputs=labelled("output"),
        locals=labelled("locals"),
        modules=labelled("module"),
        resources=typed("resource"),
        data=typed("data"),
        terraform=blocks["terraform"],
    )


def expressions(node: Any) -> Iterator[str]:
    """Every string in a parsed body that holds an interpolation."""
    if isinstance(node, dict):
        for value in node.values():
            yield from expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from expressions(value)
    elif isinstance(node, str) and "${" in node:
        yield node


def references(config: Config, pattern: str) -> set[tuple[str, ...]]:
    # Not preceded by a word character or a dot, so attribute paths such as
    # metadata[0].name or local.labels.var are not mistaken for references.
    regex = re.compile(r"(?<![\w.])" + pattern)
    bodies = [
        config.variables,
        config.outputs,
        config.locals,
        config.modules,
        config.resources,
        config.data,
    ]
    return {match.groups() for text in expressions(bodies) for match in regex.finditer(text)}


def resolve(value: Any, config: Config) -> Any:
    """Follow a bare ${local.x} or ${var.x} (its default) to a literal value."""
    while isinstance(value, str):
        match = re.fullmatch(r"\$\{(local|var)\.(\w+)\}", value)
        if not match:
            break
        kind, name = match.groups()
        value = config.locals[name] if kind == "local" else config.variables[name]["default"]
    return value


def one(blocks: list[Any]) -> dict[str, Any]:
    """The single nested block HCL-to-JSON wraps in a list."""
    assert len(blocks) == 1, blocks
    block: dict[str, Any] = blocks[0]
    return block


# 1. Parsing -----------------------------------------------------------------


def test_tree_has_the_expected_layout() -> None:
    for name in MODULE_NAMES:
        missing = [f for f in MODULE_FILES if not (MODULES / name / f).is_file()]
        assert not missing, f"modules/{name} lacks {missing}"
    for name in ["versions.tf", "providers.tf", "variables.tf", "main.tf", "outputs.tf"]:
        assert (ENVIRONMENT / name).is_file(), f"environments/solid-cloud lacks {name}"
    assert TFVARS_EXAMPLE.is_file()
    assert (TERRAFORM / "README.md").is_file()


@pytest.mark.parametrize("path", tf_files(), ids=rel)
def test_tf_file_parses(path: Path) -> None:
    assert parse(path), f"{rel(path)} holds no blocks"


# 2. Cross-references ----------------------------------------------------------


@pytest.mark.parametrize("directory", config_dirs(), ids=rel)
def test_references_resolve(directory: Path) -> None:
    config = load_config(directory)
    resource_types = "|".join(re.escape(p) for p in config.required_providers)
    assert resource_types, f"{rel(directory)} declares no required_providers"

    unresolved = [
        f"var.{n}" for (n,) in references(config, r"var\.(\w+)") if n not in config.variables
    ]
    unresolved += [
        f"local.{n}" for (n,) in references(config, r"local\.(\w+)") if n not in config.locals
    ]
    for module, output in references(config, r"module\.(\w+)\.(\w+)"):
        if module not in config.modules:
            unresolved.append(f"module.{module}")
        elif output not in config.module_config(module).outputs:
            unresolved.append(f"module.{module}.{output}")
    unresolved += [
        f"data.{t}.{n}"
        for t, n in references(config, r"data\.(\w+)\.(\w+)")
        if f"{t}.{n}" not in config.data
    ]
    unresolved += [
        f"{t}.{n}"
        for t, n in references(config, rf"((?:{resource_types})_\w+)\.(\w+)")
        if f"{t}.{n}" not in config.resources
    ]
    assert not unresolved, f"{rel(directory)}: undeclared {sorted(unresolved)}"


@pytest.mark.parametrize("directory", config_dirs(), ids=rel)
def test_resources_use_declared_providers(directory: Path) -> None:
    config = load_config(directory)
    undeclared = {
        key
        for key in [*config.resources, *config.data]
        if key.split("_", 1)[0] not in config.required_providers
    }
    assert not undeclared, f"{rel(directory)}: provider not in required_providers for {undeclared}"


def test_module_calls_match_module_variables() -> None:
    calls = [(load_config(d), name) for d in config_dirs() for name in load_config(d).modules]
    assert calls, "no module block found"
    for caller, name in calls:
        module = caller.module_config(name)
        passed = set(caller.modules[name]) - MODULE_META_ARGUMENTS
        required = {v for v, body in module.variables.items() if "default" not in body}
        where = f"{rel(caller.path)} module.{name}"
        assert passed <= set(module.variables), (
            f"{where} passes undeclared {passed - set(module.variables)}"
        )
        assert required <= passed, f"{where} misses required {required - passed}"


# 3. Conventions ---------------------------------------------------------------


def all_variables() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (rel(d), name, body)
        for d in config_dirs()
        for name, body in load_config(d).variables.items()
    ]


def test_every_variable_has_type_and_description() -> None:
    bad = [
        f"{d}: {name}"
        for d, name, body in all_variables()
        if "type" not in body or not str(body.get("description", "")).strip()
    ]
    assert not bad, f"variables without type or description: {bad}"


def test_every_output_has_description() -> None:
    bad = [
        f"{rel(d)}: {name}"
        for d in config_dirs()
        for name, body in load_config(d).outputs.items()
        if not str(body.get("description", "")).strip()
    ]
    assert not bad, f"outputs without description: {bad}"


def test_secret_variables_are_sensitive_without_default() -> None:
    secrets = [(d, name, body) for d, name, body in all_variables() if SECRET_NAME.search(name)]
    assert secrets, "no secret-looking variable found; the pattern no longer matches anything"
    bad = [
        f"{d}: {name}"
        for d, name, body in secrets
        if body.get("sensitive") is not True or "default" in body
    ]
    assert not bad, f"secret variables must be sensitive = true with no default: {bad}"


@pytest.mark.parametrize("directory", config_dirs(), ids=rel)
def test_versions_pin_terraform_and_providers(directory: Path) -> None:
    versions = parse(directory / "versions.tf")
    terraform = one(versions["terraform"])
    assert str(terraform.get("required_version", "")).strip(), "required_version missing"
    providers = load_config(directory).required_providers
    unpinned = [
        name
        for name, spec in providers.items()
        if not spec.get("source") or not str(spec.get("version", "")).strip()
    ]
    assert not unpinned, f"{rel(directory)}: providers without source/version: {unpinned}"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_readme_lists_inputs_and_outputs(name: str) -> None:
    config = load_config(MODULES / name)
    readme = (MODULES / name / "README.md").read_text(encoding="utf-8")
    undocumented = [n for n in [*config.variables, *config.outputs] if f"`{n}`" not in readme]
    assert not undocumented, f"modules/{name}/README.md does not mention {undocumented}"


# A key that ends in a credential word (secret_key, POSTGRES_PASSWORD, but not
# secret_name) assigned a quoted literal.
CREDENTIAL_ASSIGNMENT = re.compile(
    r"""(?i)([\w-]*(?:password|passwd|secret|secret_key|api_key|apikey|token|access_key|private_key))["']?\s*[=:]\s*"([^"]*)"""
)
PLACEHOLDER = re.compile(r"<[^<>]+>")


def test_no_hard_coded_credentials() -> None:
    findings = []
    files = [p for p in TERRAFORM.rglob("*") if p.is_file() and ".terraform" not in p.parts]
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for key, value in CREDENTIAL_ASSIGNMENT.findall(line):
                if value and not PLACEHOLDER.fullmatch(value):
                    findings.append(f"{rel(path)}:{number}: {key}")
            if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", line):
                findings.append(f"{rel(path)}:{number}: private key")
    assert not findings, f"credential literals in terraform/: {findings}"


def test_tfvars_example_is_complete_and_holds_placeholders_only() -> None:
    example = parse(TFVARS_EXAMPLE)
    variables = load_config(ENVIRONMENT).variables
    assert set(example) <= set(variables), f"unknown keys {set(example) - set(variables)}"
    required = {n for n, body in variables.items() if "default" not in body}
    assert required <= set(example), f"example lacks required {required - set(example)}"
    real_values = [
        key
        for key, value in example.items()
        if SECRET_NAME.search(key) and not PLACEHOLDER.fullmatch(str(value))
    ]
    assert not real_values, f"secrets in the example must be <placeholders>: {real_values}"
    for key in ["cloudstack_api_url", "kubeconfig_path", "kubeconfig_context", "zone"]:
        assert PLACEHOLDER.search(str(example[key])), f"{key} must be a placeholder"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("terraform.tfvars", True),
        ("prod.auto.tfvars", True),
        ("terraform.tfstate", True),
        ("terraform.tfstate.backup", True),
        (".terraform/providers/registry", True),
        ("tfplan", True),
        ("terraform.tfvars.example", False),
        (".terraform.lock.hcl", False),
    ],
)
def test_gitignore_keeps_secrets_and_state_out(path: Path, ignored: bool) -> None:
    target = rel(ENVIRONMENT / path)
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", target],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    assert (result.returncode == 0) == ignored, (
        f"{target} ignored={not ignored}, expected {ignored}"
    )


def test_checkov_skips_carry_a_reason() -> None:
    skips = [
        (f"{rel(p)}:{n}", line.split("checkov:skip=", 1)[1].strip())
        for p in tf_files()
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "checkov:skip=" in line
    ]
    bad = [where for where, skip in skips if not re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+:\S.{9,}", skip)]
    assert not bad, f"checkov skips need 'ID:one-line reason': {bad}"


# 4. Security scan ---------------------------------------------------------------


def checkov_executable() -> str:
    configured = os.environ.get("CHECKOV_BIN")
    if configured:
        assert Path(configured).is_file(), f"CHECKOV_BIN={configured} does not exist"
        return configured
    local = REPO / ".venv-tools" / "bin" / "checkov"
    found = shutil.which("checkov") or (str(local) if local.is_file() else None)
    if not found:
        pytest.fail("checkov not found: run `make install-tools` (or set CHECKOV_BIN)")
    return found


def test_checkov_finds_nothing_unexplained() -> None:
    command = [
        checkov_executable(),
        "-d",
        str(TERRAFORM),
        "--framework",
        "terraform",
        "--quiet",
        "--compact",
        "--skip-download",
        "-o",
        "json",
    ]
    # Without BC_SKIP_MAPPING checkov tries to download its guideline mapping.
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov exited {result.returncode} without a JSON report:\n{result.stderr[-2000:]}"
        )
    summary = report["summary"]
    assert summary["resource_count"] > 0, "checkov scanned no resources"
    assert summary["parsing_errors"] == 0, summary
    failed = [
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']} {c['check_name']}"
        for c in report["results"].get("failed_checks", [])
    ]
    assert not failed, "fix, or skip inline with '#checkov:skip=ID:reason':\n" + "\n".join(failed)


# 5. Consistency with the application -------------------------------------------


def database() -> Config:
    return load_config(MODULES / "database")


def named(config: Config, resource_type: str) -> dict[str, Any]:
    """Resources of one type keyed by their resolved metadata.name."""
    return {
        resolve(one(body["metadata"])["name"], config): body
        for key, body in config.resources.items()
        if key.split(".")[0] == resource_type
    }


def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec = one(one(one(statefulset["spec"])["template"])["spec"])
    return one(spec["container"])


def ha_branches(expression: str) -> tuple[str, str]:
    """(with, without) database_ha of a `var.database_ha ? A : B` expression."""
    match = re.fullmatch(r"\$\{var\.database_ha \? (.+) : (.+)\}", expression)
    assert match, f"not a database_ha choice: {expression}"
    return match[1], match[2]


def test_names_match_the_application_contract() -> None:
    environment = load_config(ENVIRONMENT)
    namespace = resolve(environment.modules["kubernetes"]["namespace"], environment)
    assert namespace == NAMESPACE
    assert environment.modules["database"]["namespace"] == "${module.kubernetes.namespace}"

    db = database()
    services = named(db, "kubernetes_service_v1")
    assert SERVICE in services, f"no Service named {SERVICE}: {sorted(services)}"
    ports = [resolve(p["port"], db) for p in one(services[SERVICE]["spec"])["port"]]
    assert ports == [PORT]
    # Without database_ha (the default) the host is that Service; with it, the
    # Cluster's primary (tests/test_database_ha.py).
    _, single = ha_branches(db.outputs["host"]["value"])
    assert single.startswith("kubernetes_service_v1.postgresql[0]."), single
    assert resolve(db.outputs["port"]["value"], db) == PORT
    assert resolve(db.outputs["database"]["value"], db) == DATABASE

    secret = db.resources["kubernetes_secret_v1.credentials"]
    assert resolve(one(secret["metadata"])["name"], db) in named(db, "kubernetes_secret_v1")
    assert SECRET_KEYS | {"POSTGRES_DB"} <= set(secret["data"])
    assert resolve(secret["data"]["POSTGRES_DB"], db) == DATABASE
    secret_refs = {
        one(one(env["value_from"])["secret_key_ref"])["key"]
        for env in container(named(db, "kubernetes_stateful_set_v1")["postgresql"])["env"]
        if "value_from" in env
    }
    assert secret_refs >= SECRET_KEYS


def test_terraform_never_owns_the_application_secret() -> None:
    owned = {
        name
        for d in config_dirs()
        for type_ in ["kubernetes_secret", "kubernetes_secret_v1"]
        for name in named(load_config(d), type_)
    }
    assert APP_SECRET not in owned


def test_postgresql_statefulset_is_hardened() -> None:
    # checkov has no Terraform checks for StatefulSets, so they live here.
    db = database()
    statefulset = named(db, "kubernetes_stateful_set_v1")["postgresql"]
    spec = one(statefulset["spec"])
    pod = one(one(spec["template"])["spec"])
    main = container(statefulset)

    assert spec["replicas"] == 1
    assert re.fullmatch(r"postgres:15\.\d+", resolve(main["image"], db)), "pin an exact 15.x tag"
    pod_security = one(pod["security_context"])
    assert pod_security["run_as_non_root"] is True
    assert resolve(pod_security["run_as_user"], db) == 999
    assert resolve(pod_security["fs_group"], db) == 999
    assert one(pod_security["seccomp_profile"])["type"] == "RuntimeDefault"
    container_security = one(main["security_context"])
    assert container_security["allow_privilege_escalation"] is False
    assert one(container_security["capabilities"])["drop"] == ["ALL"]
    for probe in ["readiness_probe", "liveness_probe"]:
        command = resolve(one(one(main[probe])["exec"])["command"], db)
        assert "pg_isready" in " ".join(command), f"{probe} must run pg_isready"
    resources = one(main["resources"])
    assert set(resources["requests"]) >= {"cpu", "memory"}
    assert set(resources["limits"]) >= {"cpu", "memory"}

    env = {e["name"]: resolve(e.get("value"), db) for e in main["env"]}
    mounts = {resolve(m["mount_path"], db) for m in main["volume_mount"]}
    assert env["PGDATA"] == "/var/lib/postgresql/data/pgdata"
    assert "/var/lib/postgresql/data" in mounts, "PGDATA must be a subdirectory of the volume"

    claim = one(one(spec["volume_claim_template"])["spec"])
    assert resolve(claim["storage_class_name"], db) == "local-path"
    assert resolve(one(claim["resources"])["requests"]["storage"], db) == "10Gi"


def test_only_data_services_and_the_migration_reach_postgresql() -> None:
    db = database()
    [policy] = named(db, "kubernetes_network_policy_v1").values()
    source = one(one(one(one(policy["spec"])["ingress"])["from"])["pod_selector"])
    expression = one(source["match_expressions"])
    assert expression["key"] == "app.kubernetes.io/name"
    assert expression["operator"] == "In"
    allowed = resolve(expression["values"], db)
    assert sorted(allowed) == ["blog-service", "titanium-db-migrate", "user-service"]


def test_local_path_storage_is_installed_by_default_on_solid_cloud() -> None:
    environment = load_config(ENVIRONMENT)
    install = resolve(
        environment.modules["kubernetes"]["install_local_path_provisioner"], environment
    )
    assert install is True
    requested = resolve(environment.modules["kubernetes"]["storage_class_name"], environment)
    assert requested == "local-path"
    kubernetes = load_config(MODULES / "kubernetes")
    storage_class = named(kubernetes, "kubernetes_storage_class_v1")["local-path"]
    assert storage_class["volume_binding_mode"] == "WaitForFirstConsumer"
    assert resolve(storage_class["storage_provisioner"], kubernetes) == "rancher.io/local-path"


OVERLAY_SETTING = re.compile(
    r"""\b(POSTGRES_HOST|POSTGRES_PORT|POSTGRES_DB)["']?\s*[:=]\s*["']?([^"'\s#]+)"""
)


def kustomize_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".yml", ".env", ".properties"}
    )


def database_settings(directory: Path) -> dict[str, set[str]]:
    settings: defaultdict[str, set[str]] = defaultdict(set)
    for path in kustomize_files(directory):
        for key, value in OVERLAY_SETTING.findall(path.read_text(encoding="utf-8")):
            settings[key].add(value)
    return settings


def test_solid_cloud_overlay_points_at_the_terraform_database() -> None:
    if not OVERLAY.is_dir():
        return  # the overlay arrives with the Kubernetes issue; the contract is checked above
    settings = database_settings(OVERLAY)
    # A setting the overlay does not override comes from the base.
    for key, values in database_settings(K8S / "base").items():
        settings.setdefault(key, values)
    namespaces = {
        namespace
        for path in kustomize_files(OVERLAY)
        for namespace in re.findall(
            r"(?m)^\s*namespace:\s*[\"']?([\w.-]+)", path.read_text(encoding="utf-8")
        )
    }

    fqdn = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
    assert settings["POSTGRES_HOST"] and settings["POSTGRES_HOST"] <= {SERVICE, fqdn}, settings
    assert settings["POSTGRES_PORT"] == {str(PORT)}, settings
    assert settings["POSTGRES_DB"] == {DATABASE}, settings
    assert namespaces == {NAMESPACE}, f"overlay namespaces {namespaces}"
    statefulsets = [
        rel(p)
        for p in kustomize_files(K8S)
        if re.search(r"(?m)^kind:\s*StatefulSet\b", p.read_text(encoding="utf-8"))
    ]
    assert not statefulsets, (
        f"PostgreSQL is defined once, in terraform/modules/database: {statefulsets}"
    )
