"""JWT issue and verify with an Ed25519 key pair (EdDSA).

Only auth-service holds the private key, so only it can mint tokens; every
other service verifies with the public key. The algorithm is pinned, which
rules out `alg: none` and HS256-signed-with-the-public-key forgeries.

`JWT_PUBLIC_KEY` may hold several PEM public keys, one after the other: that is
how a key rotation keeps tokens signed with the previous key valid until they
expire (k8s/README.md).
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from titanium.config import Settings
from titanium.errors import ConfigError, Unauthorized

ALGORITHM = "EdDSA"
PEM_PUBLIC_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: int
    username: str
    expires_at: int


def _read(value: str | None, path: Path | None, variable: str) -> str | None:
    if value:
        return value
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from None


def _public_keys(pem: str) -> list[Ed25519PublicKey]:
    keys = []
    for block in PEM_PUBLIC_KEY.findall(pem) or [pem]:
        try:
            key = serialization.load_pem_public_key(block.encode())
        except ValueError:
            raise ConfigError("JWT_PUBLIC_KEY: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("JWT_PUBLIC_KEY: must be an Ed25519 key")
        keys.append(key)
    return keys


class TokenVerifier:
    """Verifies tokens with the public key(s); created once per service."""

    def __init__(self, settings: Settings) -> None:
        pem = _read(settings.jwt_public_key, settings.jwt_public_key_file, "JWT_PUBLIC_KEY")
        if pem is None:
            private = _read_private(settings)
            if private is None:
                raise ConfigError("JWT_PUBLIC_KEY (or JWT_PUBLIC_KEY_FILE) is required")
            self._keys = [private.public_key()]
        else:
            self._keys = _public_keys(pem)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience

    def verify(self, token: str) -> Identity:
        """Return the identity in a valid token; raise Unauthorized otherwise."""
        try:
            claims = self._decode(token)
            return Identity(
                user_id=int(claims["sub"]),
                username=str(claims["username"]),
                expires_at=int(claims["exp"]),
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
            raise Unauthorized("invalid token") from None

    def _decode(self, token: str) -> dict[str, Any]:
        # The signature is checked before the claims, so a key that did not sign
        # the token fails with InvalidSignatureError and the next one is tried.
        *previous, last = self._keys
        for key in previous:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, last)

    def _decode_with(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=self._audience,
            issuer=self._issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )


def _read_private(settings: Settings) -> Ed25519PrivateKey | None:
    secret = settings.jwt_private_key.get_secret_value() if settings.jwt_private_key else None
    pem = _read(secret, settings.jwt_private_key_file, "JWT_PRIVATE_KEY")
    if pem is None:
        return None
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except ValueError:
        raise ConfigError("JWT_PRIVATE_KEY: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("JWT_PRIVATE_KEY: must be an Ed25519 key")
    return key


class TokenIssuer:
    """Mints tokens with the private key; only auth-service creates one."""

    def __init__(self, settings: Settings) -> None:
        key = _read_private(settings)
        if key is None:
            raise ConfigError("JWT_PRIVATE_KEY (or JWT_PRIVATE_KEY_FILE) is required")
        self._key = key
        self._ttl = settings.jwt_ttl_seconds
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience

    @property
    def ttl_seconds(self) -> int:
        """Lifetime of the tokens this issuer mints."""
        return self._ttl

    def issue(self, user_id: int, username: str) -> str:
        """A signed token for the user, valid for the configured lifetime."""
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "username": username,
            "iat": now,
            "exp": now + self._ttl,
            "iss": self._issuer,
            "aud": self._audience,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (private file mode 0600) unless one exists."""
    private_path = directory / "jwt-private.pem"
    public_path = directory / "jwt-public.pem"
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path
