"""Which schema revision each service's code expects, and reading the database's.

Services check this on every /ready without importing Alembic (about 11 MB of
resident memory per process). The lists must follow the Alembic histories in
`titanium/db/migrations/`; `tests/test_migrations.py` fails when they do not.
"""

from sqlalchemy import Connection, inspect, text

from titanium.config import DataService
from titanium.db.engine import Database
from titanium.errors import NotReady

# Oldest first; the last one is the head. Add a revision here with its migration.
REVISIONS: dict[DataService, tuple[str, ...]] = {
    "users": ("0001", "0002", "0003"),
    "blog": ("0001", "0002", "0003", "0004"),
}


def version_table(service: DataService) -> str:
    """Name of the Alembic version table of a service."""
    return f"alembic_version_{service}"


def head_revision(service: DataService) -> str:
    """The revision the code expects the service's schema to be at."""
    return REVISIONS[service][-1]


def revision_sql(service: DataService) -> str:
    """The query that reads a service's revision, for any driver (its table must exist)."""
    return f"SELECT version_num FROM {version_table(service)}"  # noqa: S608 - fixed names


def read_revision(connection: Connection, service: DataService) -> str | None:
    """The revision the database is at (None before the first upgrade)."""
    if not inspect(connection).has_table(version_table(service)):
        return None
    value = connection.execute(text(revision_sql(service))).scalar()
    return str(value) if value is not None else None


async def check_schema(db: Database) -> dict[str, str]:
    """Readiness: the database answers and the schema is at the code's head revision."""
    service: DataService = db.service
    current = await db.run_read(read_revision, service)
    expected = head_revision(service)
    if current is not None and current not in REVISIONS[service]:
        # A revision this code has never heard of is a newer one: during a rollout
        # the migration Job runs first and old pods keep serving. Migrations are
        # written expand-then-contract so that the previous release still works.
        return {"database": db.backend, "schema_revision": current, "schema": "ahead of code"}
    if current != expected:
        raise NotReady(
            f"schema of {service} is at {current or 'nothing'}, expected {expected}: "
            "run `titanium db upgrade`",
            reason="schema",
        )
    return {"database": db.backend, "schema_revision": current}
