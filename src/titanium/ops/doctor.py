"""`titanium doctor`: diagnose the configuration this process runs with.

Configuration, then the selected database (PostgreSQL: DNS, TCP, authentication,
database, schema revision, tables, a write probe; SQLite: file, writability, WAL,
integrity, schema revision), then the cluster when kubectl has a context. Each
check says PASS/WARN/FAIL and, when not PASS, the one-line fix.
"""

import asyncio
import json
import os
import socket
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import asyncpg

from titanium.config import DataService, Settings, load_settings
from titanium.db.engine import connect_postgres
from titanium.db.revisions import head_revision, revision_sql, version_table
from titanium.errors import ConfigError
from titanium.ops.checks import Check, Status
from titanium.ops.kubectl import Kubectl, KubectlError
from titanium.security.tokens import TokenVerifier
from titanium.services.registry import DATA_SERVICES

TABLES = ("users", "posts", "categories")
CONFIG_DOC = "see docs/configuration.md"


def config_checks(environ: dict[str, str]) -> tuple[Settings | None, list[Check]]:
    """Load the settings; check the variables are present, well-formed and consistent."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        return None, [
            Check("config", "settings", Status.FAIL, exc.message, f"set it ({CONFIG_DOC})")
        ]
    checks = [Check("config", "settings", Status.PASS, f"backend {settings.backend}")]
    postgres_vars = sorted(k for k in environ if k.startswith("POSTGRES_"))
    if not settings.use_postgres and postgres_vars:
        checks.append(
            Check(
                "config", "USE_POSTGRES", Status.WARN,
                f"{', '.join(postgres_vars)} set but USE_POSTGRES is not true: SQLite is used",
                "set USE_POSTGRES=true to use PostgreSQL, or remove the POSTGRES_* variables",
            )
        )  # fmt: skip
    if settings.use_postgres and "DATABASE_PATH" in environ:
        checks.append(
            Check(
                "config", "DATABASE_PATH", Status.WARN,
                "DATABASE_PATH is ignored when USE_POSTGRES=true", "remove DATABASE_PATH",
            )
        )  # fmt: skip
    try:
        TokenVerifier(settings)
        checks.append(Check("config", "token keys", Status.PASS, "public key loads"))
    except ConfigError as exc:
        checks.append(
            Check("config", "token keys", Status.WARN, exc.message,
                  "set JWT_PUBLIC_KEY_FILE (`titanium run` makes var/keys/jwt-public.pem)")
        )  # fmt: skip
    return settings, checks


async def _reach(group: str, host: str, port: int) -> list[Check]:
    """Name resolution and a TCP connection to one server."""
    try:
        addresses = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        return [
            Check(
                group, "dns", Status.FAIL,
                f"cannot resolve POSTGRES_HOST={host!r} ({exc.strerror})",
                "check the Service name and namespace: kubectl get svc -n titanium-prod "
                "(outside the cluster, kubectl port-forward svc/postgresql-service 5432)",
            )
        ]  # fmt: skip
    checks = [Check(group, "dns", Status.PASS, f"{host} -> {addresses[0][4][0]}")]
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
        writer.close()
    except (OSError, TimeoutError) as exc:
        checks.append(
            Check(
                group, "tcp", Status.FAIL, f"cannot connect to {host}:{port} ({exc!r})",
                "is postgresql-0 Running and the port right? kubectl get pods -n titanium-prod",
            )
        )  # fmt: skip
        return checks
    checks.append(Check(group, "tcp", Status.PASS, f"{host}:{port} accepts connections"))
    return checks


async def postgres_checks(settings: Settings) -> list[Check]:
    """From name resolution to a write probe; stops at the first failure the rest needs."""
    group = "postgresql"
    checks: list[Check] = []
    reachable = 0
    # Each server of POSTGRES_HOST (one, or the members of an HA cluster): one of
    # them answering is enough for the services, which pick the writable one.
    for host, port in settings.postgres_servers:
        found = await _reach(group, host, port)
        checks.extend(found)
        reachable += all(check.status is Status.PASS for check in found)
    if not reachable:
        return checks
    try:
        conn = await connect_postgres(settings, "titanium-doctor")
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        checks.append(
            Check(
                group, "authentication", Status.FAIL,
                f"user {settings.postgres_user!r} cannot log in ({exc.__class__.__name__})",
                "POSTGRES_USER/POSTGRES_PASSWORD must match the database's role "
                "(Secret titanium-secrets vs postgresql-credentials)",
            )
        )  # fmt: skip
        return checks
    except asyncpg.InvalidCatalogNameError:
        checks.append(Check(group, "authentication", Status.PASS, f"user {settings.postgres_user}"))
        checks.append(
            Check(
                group, "database", Status.FAIL, f"database {settings.postgres_db!r} does not exist",
                f"create it: psql -c 'CREATE DATABASE \"{settings.postgres_db}\"' "
                "(or fix POSTGRES_DB)",
            )
        )  # fmt: skip
        return checks
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        checks.append(Check(group, "connect", Status.FAIL, repr(exc), "check the server log"))
        return checks
    try:
        checks.append(Check(group, "authentication", Status.PASS, f"user {settings.postgres_user}"))
        checks.append(Check(group, "database", Status.PASS, f"{settings.postgres_db} exists"))
        for service in DATA_SERVICES:
            current = (
                await conn.fetchval(revision_sql(service))
                if await conn.fetchval("SELECT to_regclass($1)", version_table(service))
                else None
            )
            checks.append(_revision_check(group, service, current))
        missing = [t for t in TABLES if not await conn.fetchval("SELECT to_regclass($1)", t)]
        checks.append(
            Check(
                group,
                "tables",
                Status.FAIL,
                f"missing: {', '.join(missing)}",
                "titanium db upgrade",
            )
            if missing
            else Check(group, "tables", Status.PASS, ", ".join(TABLES))
        )
        checks.append(await _write_probe(conn, group))
    finally:
        await conn.close()
    return checks


async def _write_probe(conn: asyncpg.Connection, group: str) -> Check:
    try:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE titanium_doctor_probe (value text)")
            await conn.execute("INSERT INTO titanium_doctor_probe VALUES ('probe')")
            value = await conn.fetchval("SELECT value FROM titanium_doctor_probe")
            raise _RollBack(value)
    except _RollBack as done:
        if done.value == "probe":
            return Check(group, "write probe", Status.PASS, "write, read and rollback work")
        return Check(
            group, "write probe", Status.FAIL, "read back a different value", "check the server"
        )
    except asyncpg.PostgresError as exc:
        return Check(
            group, "write probe", Status.FAIL, f"{exc.__class__.__name__}: {exc}",
            "the server refuses writes: read-only replica or disk full? check the server log",
        )  # fmt: skip


class _RollBack(Exception):
    def __init__(self, value: object) -> None:
        super().__init__("roll back")
        self.value = value


def _revision_check(group: str, service: DataService, current: str | None) -> Check:
    expected = head_revision(service)
    if current == expected:
        return Check(group, f"schema {service}", Status.PASS, f"at head {expected}")
    return Check(
        group, f"schema {service}", Status.FAIL,
        f"at {current or 'nothing'}, code expects {expected}",
        "run `titanium db upgrade` (in the cluster: the migration Job)",
    )  # fmt: skip


def sqlite_checks(settings: Settings) -> list[Check]:
    """File present and writable, WAL, integrity and schema revision of each SQLite file."""
    checks: list[Check] = []
    seen: set[Path] = set()
    for service in DATA_SERVICES:
        path = settings.sqlite_path(service)
        group = f"sqlite {service}"
        if path not in seen:
            seen.add(path)
            checks += _sqlite_file_checks(path, group)
        if path.exists():
            checks.append(_revision_check(group, service, _sqlite_revision(path, service)))
    return checks


def _sqlite_file_checks(path: Path, group: str) -> list[Check]:
    fix = "point DATABASE_PATH or DATA_DIR at a writable volume (a PVC in Kubernetes)"
    if not path.exists():
        directory = _nearest_existing(path.parent)
        if not _can_write_in(directory):
            where = path.parent if directory != path.parent else directory
            return [Check(group, "file", Status.FAIL, f"cannot create {where}", fix)]
        return [
            Check(group, "file", Status.WARN, f"{path} does not exist yet",
                  "`titanium db upgrade` or the first start creates it")
        ]  # fmt: skip
    checks = [Check(group, "file", Status.PASS, str(path))]
    if _can_write_in(path.parent) and os.access(path, os.W_OK):
        checks.append(Check(group, "writable", Status.PASS, "file and directory writable"))
    else:
        checks.append(
            Check(group, "writable", Status.FAIL, f"{path} or its directory is read-only",
                  "mount the data volume read-write; SQLite needs the directory for its -wal file")
        )  # fmt: skip
    try:
        with _read_only(path) as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        checks.append(Check(group, "integrity", Status.FAIL, f"not a readable database: {exc}",
                            "restore the file from its backup"))  # fmt: skip
        return checks
    checks.append(
        Check(group, "wal", Status.PASS, "journal_mode=wal")
        if mode == "wal"
        else Check(group, "wal", Status.WARN, f"journal_mode={mode}",
                   "Titanium switches to WAL when a service opens the file")
    )  # fmt: skip
    checks.append(
        Check(group, "integrity", Status.PASS, "quick_check ok")
        if integrity == "ok"
        else Check(group, "integrity", Status.FAIL, integrity, "restore the file from its backup")
    )
    return checks


def _sqlite_revision(path: Path, service: DataService) -> str | None:
    try:
        with _read_only(path) as conn:
            row = conn.execute(revision_sql(service)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return str(row[0]) if row else None


def _read_only(path: Path) -> closing[sqlite3.Connection]:
    # sqlite3's own context manager commits but never closes; closing() closes.
    return closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2))


def _can_write_in(directory: Path) -> bool:
    # A real probe: os.access() says yes to root even on a read-only mount.
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


async def diagnose(environ: dict[str, str]) -> list[Check]:
    """Configuration and database checks for this process's environment."""
    settings, checks = config_checks(environ)
    if settings is None:
        return checks
    if settings.use_postgres:
        checks += await postgres_checks(settings)
    else:
        checks += await asyncio.to_thread(sqlite_checks, settings)
    return checks


def diagnose_pod(kubectl: Kubectl, namespace: str, pod: str) -> list[Check]:
    """Run the doctor inside a pod, where its DNS and environment are the service's own."""
    try:
        output = kubectl.run(
            "exec", pod, "-n", namespace, "--", "titanium", "doctor", "--json", "--no-cluster"
        )
        payload = json.loads(output)
        return [
            Check(f"pod {c['group']}", c["name"], Status(c["status"]), c["detail"], c["fix"])
            for c in payload["checks"]
        ]
    except (KubectlError, ValueError, KeyError) as exc:
        return [
            Check("pod", pod, Status.FAIL, f"cannot run the doctor in the pod: {exc}",
                  f"kubectl get pod {pod} -n {namespace}")
        ]  # fmt: skip
