"""GitOps from git alone: sealed secret inputs, Argo CD's sops plugin, no plaintext committed.

Argo CD has nothing but a clone of the repository. Each test here works on such a
clone (tests/support/checkout.py) whose `.sops.yaml` names a throwaway age key:
the secret inputs are sealed with `titanium secrets seal`, decrypted by the real
`sops` inside the plugin's own commands, and rendered. Without the key nothing
renders; with it, the result equals what `titanium secrets unseal` + `kubectl
kustomize` give an operator by hand.
"""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.checkout import (
    ARGOCD,
    REPO,
    TITANIUM,
    Checkout,
    applications,
    find_kubectl,
    git_files,
    load_all,
    plugins,
    run,
    secret_inputs,
)
from support.crds import VALIDATORS, crd_errors
from titanium.ops.sops import find_sops, sealed_path

pytestmark = pytest.mark.infra  # sops, age, kubectl and a clone of the tree

K8S_VERSION = kubernetes_validate.latest_version()
SEALED_OVERLAY = "k8s/overlays/solid-cloud"
PATCH = ARGOCD / "repo-server-patch.yaml"
# A stand-in for the official install's argocd-repo-server, with only what the
# patch relies on: the container, the var-files and plugins volumes.
REPO_SERVER = REPO / "tests" / "fixtures" / "delivery" / "argocd-repo-server.yaml"


def sops(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run([find_sops(), *args], **kwargs)


def strictly_valid(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in VALIDATORS:
            errors.extend(crd_errors(obj))  # a custom resource: against its CRD
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.message}")
    return errors


# --- every Argo CD path renders from a clean clone --------------------------------


def test_every_application_path_renders_from_a_clean_clone(checkout: Checkout) -> None:
    apps = applications()
    assert apps, "no Argo CD Application under argocd/"
    for application in apps:
        source = application["spec"]["source"]
        result = checkout.render(source["path"])
        assert result.returncode == 0, f"{source['path']}: {result.stderr}"
        objects = load_all(result.stdout)
        assert objects and not strictly_valid(objects), strictly_valid(objects)
        assert any(o["kind"] == "Secret" for o in objects), "the Secret is not rendered"


def test_the_sealed_overlay_is_rendered_by_the_sops_plugin(checkout: Checkout) -> None:
    named = {a["spec"]["source"]["path"]: a["spec"]["source"].get("plugin") for a in applications()}
    assert named[SEALED_OVERLAY] == {"name": "sops-kustomize"}, named
    assert "sops-kustomize" in plugins()
    assert checkout.is_sealed(checkout.root / SEALED_OVERLAY)


def test_without_the_age_key_nothing_renders(checkout: Checkout, tmp_path: Path) -> None:
    assert checkout.render(SEALED_OVERLAY).returncode == 0
    other = tmp_path / "other.txt"
    assert run(["age-keygen", "-o", str(other)]).returncode == 0
    overlay = checkout.root / SEALED_OVERLAY
    for plain in secret_inputs(overlay):
        plain.unlink(missing_ok=True)
    env = {**checkout.plugin_env(SEALED_OVERLAY), "SOPS_AGE_KEY_FILE": str(other)}
    spec = plugins()["sops-kustomize"]["spec"]["generate"]
    result = run([*spec["command"], *spec["args"]], cwd=overlay, env=env)
    assert result.returncode != 0 and not result.stdout, result.stdout
    assert "decrypt" in result.stderr.lower() or "key" in result.stderr.lower(), result.stderr
    checkout.rendered.pop(SEALED_OVERLAY)  # the next render makes the inputs again


def test_the_plugin_renders_what_an_operator_renders_by_hand(checkout: Checkout) -> None:
    plugin = checkout.render(SEALED_OVERLAY)
    assert plugin.returncode == 0, plugin.stderr
    overlay = checkout.root / SEALED_OVERLAY
    for plain in secret_inputs(overlay):
        plain.unlink()
    unsealed = run(
        [str(TITANIUM), "secrets", "unseal", str(overlay)],
        env={**checkout.plugin_env(SEALED_OVERLAY), "PATH": "/usr/bin:/bin"},
    )
    assert unsealed.returncode == 0, unsealed.stderr
    for plain in secret_inputs(overlay):
        assert plain.stat().st_mode & 0o077 == 0, f"{plain} is readable by others"
    by_hand = run([find_kubectl(), "kustomize", str(overlay)])
    assert by_hand.returncode == 0, by_hand.stderr
    assert load_all(by_hand.stdout) == load_all(plugin.stdout)


# --- sealing: the documented commands ---------------------------------------------


def test_seal_encrypts_every_input_removes_the_plaintext_and_unseal_restores_it(
    checkout: Checkout, tmp_path: Path
) -> None:
    overlay = checkout.root / SEALED_OVERLAY
    checkout.make_secret_inputs(overlay)  # sealed to the throwaway key
    unseal = [str(TITANIUM), "secrets", "unseal", str(overlay)]
    env = checkout.plugin_env(SEALED_OVERLAY)
    assert run(unseal, env=env).returncode == 0
    before = {plain: plain.read_bytes() for plain in secret_inputs(overlay)}
    sealed = run([str(TITANIUM), "secrets", "seal", str(overlay)], env=env)
    assert sealed.returncode == 0, sealed.stderr
    for plain, content in before.items():
        assert not plain.exists(), f"{plain} left in plaintext after sealing"
        twin = sealed_path(plain).read_bytes()
        assert content.strip() not in twin, f"{sealed_path(plain)} holds its plaintext"
    assert run(unseal, env=env).returncode == 0
    assert {plain: plain.read_bytes() for plain in before} == before
    checkout.rendered.pop(SEALED_OVERLAY, None)


def test_seal_refuses_missing_inputs_and_placeholders(checkout: Checkout) -> None:
    overlay = checkout.root / SEALED_OVERLAY
    env = checkout.plugin_env(SEALED_OVERLAY)
    seal = [str(TITANIUM), "secrets", "seal", str(overlay)]
    checkout.make_secret_inputs(overlay)
    assert run([str(TITANIUM), "secrets", "unseal", str(overlay)], env=env).returncode == 0
    twins = {path: path.read_bytes() for path in overlay.glob("secrets/*.sops.*")}
    env_file, *_ = secret_inputs(overlay)
    kept = env_file.read_text()

    env_file.write_text((overlay / "secrets" / "titanium.env.example").read_text())
    refused = run(seal, env=env)
    assert refused.returncode == 2, refused.stdout
    assert "placeholder" in refused.stderr and len(refused.stderr.splitlines()) == 1

    env_file.unlink()
    refused = run(seal, env=env)
    assert refused.returncode == 2 and "titanium.env: missing" in refused.stderr, refused.stderr
    # Nothing sealed, nothing lost: the twins and the other plaintext inputs are as they were.
    assert {path: path.read_bytes() for path in overlay.glob("secrets/*.sops.*")} == twins
    assert all(plain.exists() for plain in secret_inputs(overlay) if plain != env_file)
    env_file.write_text(kept)
    checkout.rendered.pop(SEALED_OVERLAY, None)


# --- what is committed -------------------------------------------------------------

PRIVATE_KEY = ("PRIVATE KEY-----", "AGE-SECRET-KEY-1")
SEALED_NAME = re.compile(r"[^.].*\.sops\.[^.]+")  # NAME.sops.EXT, not .sops.yaml


def secret_material(path: Path) -> list[str]:
    """Plaintext secret material in a file that would be committed, described."""
    text = path.read_text(encoding="utf-8")
    found = [f"a private key ({mark})" for mark in PRIVATE_KEY if mark in text]
    # Allowed: sops' encrypted values, and the placeholders of the .example files.
    allowed = ("ENC[", "replace-") if path.name.endswith(".example") else ("ENC[",)
    for value in re.findall(r"POSTGRES_PASSWORD=([^\s`]+)", text):
        if not value.startswith(allowed):
            found.append("a POSTGRES_PASSWORD= literal")
    if path.suffix in {".yaml", ".yml"}:
        found += [
            f"a plaintext Secret {doc.get('metadata', {}).get('name')}"
            for doc in yaml.safe_load_all(text)
            if isinstance(doc, dict)
            and doc.get("kind") == "Secret"
            and (doc.get("data") or doc.get("stringData"))
        ]
    if SEALED_NAME.fullmatch(path.name):
        status = sops("filestatus", str(path))
        if status.returncode != 0 or not json.loads(status.stdout).get("encrypted"):
            found.append("a .sops. file that sops did not encrypt")
    elif path.suffix in {".env", ".pem"}:
        found.append("a plaintext secret input")
    return found


def committed(*prefixes: str) -> list[Path]:
    return [REPO / name for name in git_files(REPO) if name.startswith(prefixes)]


def test_no_plaintext_secret_is_committed() -> None:
    files = committed("k8s/", "argocd/", ".sops.yaml")
    assert any(SEALED_NAME.fullmatch(p.name) for p in files), "no sealed file is committed"
    findings = {str(p.relative_to(REPO)): f for p in files if (f := secret_material(p))}
    assert not findings, findings
    overlays = [path.parent for path in REPO.glob("k8s/overlays/*/kustomization.yaml")]
    for overlay in overlays:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        for generator in kustomization.get("secretGenerator", []):
            assert "literals" not in generator, f"{overlay}: secret literals"
    inputs = sorted(str(plain) for overlay in overlays for plain in secret_inputs(overlay))
    ignored = run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"], input="\n".join(inputs)
    )
    assert sorted(ignored.stdout.split()) == inputs, "a plaintext secret input is not git-ignored"


@pytest.mark.parametrize(
    ("name", "content", "finding"),
    [
        ("secret.yaml", "kind: Secret\nmetadata: {name: s}\ndata: {a: eA==}\n", "plaintext Secret"),
        (
            "secret.yaml",
            "kind: Secret\nmetadata: {name: s}\nstringData: {a: x}\n",
            "plaintext Secret",
        ),
        (
            "key.txt",
            "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n",
            "private key",
        ),
        ("notes.md", "AGE-SECRET-KEY-1QQQ\n", "private key"),
        ("cm.yaml", "data:\n  run: POSTGRES_PASSWORD=hunter2 titanium\n", "POSTGRES_PASSWORD"),
        ("db.env.example", "POSTGRES_PASSWORD=hunter2\n", "POSTGRES_PASSWORD"),
        ("titanium.env", "POSTGRES_USER=x\n", "plaintext secret input"),
        ("titanium.sops.env", "POSTGRES_USER=x\n", "did not encrypt"),
    ],
)
def test_the_policy_finds_what_it_forbids(
    tmp_path: Path, name: str, content: str, finding: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert any(finding in f for f in secret_material(path)), secret_material(path)


def test_the_policy_passes_placeholders_and_sealed_files(checkout: Checkout) -> None:
    example = REPO / SEALED_OVERLAY / "secrets" / "titanium.env.example"
    assert secret_material(example) == []
    checkout.make_secret_inputs(checkout.root / SEALED_OVERLAY)
    for twin in (checkout.root / SEALED_OVERLAY).glob("secrets/*.sops.*"):
        assert secret_material(twin) == [], twin


def recipients(sealed: Path) -> set[str]:
    """The age recipients a sealed file is encrypted to, from its sops metadata."""
    text = sealed.read_text()
    if sealed.suffix == ".env":
        return {
            line.partition("=")[2]
            for line in text.splitlines()
            if line.startswith("sops_age__") and line.partition("=")[0].endswith("_recipient")
        }
    return {entry["recipient"] for entry in json.loads(text)["sops"]["age"]}


def test_committed_sealed_files_are_the_inputs_sealed_to_the_configured_recipients() -> None:
    rules = yaml.safe_load((REPO / ".sops.yaml").read_text())["creation_rules"]
    overlay = REPO / SEALED_OVERLAY
    twins = {sealed_path(plain) for plain in secret_inputs(overlay)}
    assert set(overlay.glob("secrets/*.sops.*")) == twins
    for twin in twins:
        assert twin in {REPO / name for name in git_files(REPO)}, f"{twin} is not committed"
        matching = [r for r in rules if re.search(r["path_regex"], str(twin))]
        assert matching, f"{twin}: no creation rule of .sops.yaml matches"
        assert recipients(twin) == set(matching[0]["age"].split(",")), twin


# --- Argo CD's side -----------------------------------------------------------------


def test_the_repo_server_patch_merges_into_argocd_and_wires_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(REPO_SERVER.read_text())
    (tmp_path / "patch.yaml").write_text(PATCH.read_text())
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [base.yaml]\npatches:\n  - path: patch.yaml\n"
    )
    result = run([find_kubectl(), "kustomize", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    (deployment,) = load_all(result.stdout)
    assert not strictly_valid([deployment]), strictly_valid([deployment])
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = next(c for c in pod["containers"] if c["name"] == "sops-kustomize")
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert sidecar["command"] == ["/var/run/argocd/argocd-cmp-server"]
    assert mounts["/var/run/argocd"]["name"] == "var-files"
    assert mounts["/home/argocd/cmp-server/plugins"]["name"] == "plugins"
    config = mounts["/home/argocd/cmp-server/config/plugin.yaml"]
    (plugin_map,) = [o for o in load_all((ARGOCD / "sops-plugin.yaml").read_text())]
    assert volumes[config["name"]]["configMap"]["name"] == plugin_map["metadata"]["name"]
    assert config["subPath"] in plugin_map["data"]
    key_file = next(e["value"] for e in sidecar["env"] if e["name"] == "SOPS_AGE_KEY_FILE")
    key_mount = next(m for path, m in mounts.items() if key_file.startswith(path + "/"))
    secret_name = volumes[key_mount["name"]]["secret"]["secretName"]
    readme = (REPO / "k8s" / "README.md").read_text()
    assert f"create secret generic {secret_name}" in readme, secret_name
    assert f"--from-file={Path(key_file).name}=" in readme, key_file
    # sops reaches the sidecar's PATH from the init container, through a shared volume.
    (installer,) = [c for c in pod["initContainers"] if c["name"] == "install-sops"]
    assert installer["image"].startswith("ghcr.io/getsops/sops:v3.11.0"), installer["image"]
    shared = {m["name"] for m in installer["volumeMounts"]}
    assert mounts["/usr/local/bin/sops"]["name"] in shared, mounts
