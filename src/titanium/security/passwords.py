"""Password hashing: argon2id for new hashes, werkzeug's PBKDF2 format still verifies.

Users migrated from the old system carry `pbkdf2:sha256:ITERATIONS$SALT$HEX`
hashes; they keep logging in, and `needs_rehash` tells the caller to replace
the hash with argon2id after a successful login.
"""

import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# One of OWASP's equivalent argon2id settings (12 MiB, t=3, p=1): as strong as its
# 19 MiB/t=2 baseline, with a smaller memory peak per hash for a 120 MB budget.
_hasher = PasswordHasher(time_cost=3, memory_cost=12 * 1024, parallelism=1)

_WERKZEUG_PREFIX = "pbkdf2:sha256:"
# Bounds the work a crafted hash can demand from one login.
_MAX_PBKDF2_ITERATIONS = 5_000_000

# Verified when the username does not exist, so an unknown user costs the same
# time as a wrong password and cannot be told apart by timing.
DUMMY_HASH = _hasher.hash("titanium-dummy-password")


def hash_password(password: str) -> str:
    """Hash a password with argon2id (the whole password: nothing is truncated)."""
    return _hasher.hash(password)


def verify_password(password: str, stored_hash: str) -> bool:
    """True when `password` matches `stored_hash` (argon2id or werkzeug PBKDF2)."""
    if stored_hash.startswith(_WERKZEUG_PREFIX):
        return _verify_werkzeug(password, stored_hash)
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash is not argon2id with the current parameters."""
    if stored_hash.startswith(_WERKZEUG_PREFIX):
        return True
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


def _verify_werkzeug(password: str, stored_hash: str) -> bool:
    method, _, rest = stored_hash.partition("$")
    salt, _, expected_hex = rest.partition("$")
    iterations_text = method.removeprefix(_WERKZEUG_PREFIX)
    if not iterations_text.isdigit() or not salt or not expected_hex:
        return False
    iterations = int(iterations_text)
    if not 1 <= iterations <= _MAX_PBKDF2_ITERATIONS:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return hmac.compare_digest(actual.hex(), expected_hex.lower())
