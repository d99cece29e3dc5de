"""Alembic revisions on both backends: up/down/up, the seed's DDL, agreement with the tables."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from support.database import BACKENDS
from support.env import settings_for
from titanium.config import DataService, Settings
from titanium.db.engine import create_engine
from titanium.db.migrations import (
    alembic_config,
    current_revision,
    downgrade_schema,
    upgrade_schema,
)
from titanium.db.revisions import REVISIONS, head_revision
from titanium.db.tables import METADATA
from titanium.services.registry import DATA_SERVICES, SERVICES

EnvFactory = Callable[[str], dict[str, str]]


def query(settings: Settings, service: Any, sql: str) -> list[tuple[Any, ...]]:
    async def go() -> list[tuple[Any, ...]]:
        engine = create_engine(settings, service, role="migrate", null_pool=True)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in (await conn.execute(text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def schema_diff(settings: Settings, service: Any) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, kind, _parent: (
                    not (
                        kind == "table" and name is not None and name.startswith("alembic_version")
                    )
                    and not (kind == "table" and name not in METADATA[service].tables)
                ),
            },
        )
        return list(compare_metadata(context, METADATA[service]))

    async def go() -> list[Any]:
        engine = create_engine(settings, service, role="migrate", null_pool=True)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_known_revisions_follow_the_alembic_histories() -> None:
    # /ready reads REVISIONS instead of importing Alembic; a migration added
    # without listing it there would make every pod report "ahead of code".
    for service in DATA_SERVICES:
        scripts = ScriptDirectory.from_config(alembic_config(service))
        oldest_first = tuple(s.revision for s in scripts.walk_revisions())[::-1]
        assert REVISIONS[service] == oldest_first


def test_services_do_not_import_alembic() -> None:
    # Each service would carry ~11 MB more resident memory (issue 9's 120 MB budget).
    code = (
        "import sys, titanium.services.blog.app, titanium.services.users.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'typer')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_downgrade_upgrade(backend: str, database_env: EnvFactory) -> None:
    settings = settings_for(database_env(backend))
    for service in DATA_SERVICES:
        assert asyncio.run(upgrade_schema(settings, service)) == head_revision(service)
        assert asyncio.run(downgrade_schema(settings, service, "base")) is None
        assert asyncio.run(current_revision(settings, service)) is None
        assert asyncio.run(upgrade_schema(settings, service)) == head_revision(service)
    categories = query(settings, "blog", "SELECT id, slug FROM categories ORDER BY id")
    assert categories == [(1, "tech-stack"), (2, "troubleshooting"), (3, "test")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tables_and_migrations_agree(backend: str, database_env: EnvFactory) -> None:
    settings = settings_for(database_env(backend))
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
        assert schema_diff(settings, service) == [], service


def test_sqlite_runs_in_wal_mode(database_env: EnvFactory) -> None:
    settings = settings_for(database_env("sqlite"))
    asyncio.run(upgrade_schema(settings, "blog"))
    assert query(settings, "blog", "PRAGMA journal_mode") == [("wal",)]
    sql = query(settings, "blog", "SELECT sql FROM sqlite_master WHERE name = 'posts'")[0][0]
    assert "AUTOINCREMENT" in sql


SEED_COLUMNS = {
    ("users", "id"): ("integer", None, "NO", "nextval('users_id_seq'::regclass)"),
    ("users", "username"): ("character varying", 100, "NO", None),
    ("users", "email"): ("character varying", 255, "NO", None),
    ("users", "password_hash"): ("character varying", 255, "NO", None),
    ("users", "created_at"): ("timestamp without time zone", None, "YES", "CURRENT_TIMESTAMP"),
    # Titanium's additions to the seed's columns: the look-alike key and the post's owner.
    ("users", "username_key"): ("character varying", 100, "YES", None),
    ("posts", "id"): ("integer", None, "NO", "nextval('posts_id_seq'::regclass)"),
    ("posts", "title"): ("character varying", 200, "NO", None),
    ("posts", "content"): ("text", None, "NO", None),
    ("posts", "author"): ("character varying", 100, "NO", None),
    ("posts", "created_at"): ("timestamp without time zone", None, "YES", "CURRENT_TIMESTAMP"),
    ("posts", "updated_at"): ("timestamp without time zone", None, "YES", "CURRENT_TIMESTAMP"),
    ("posts", "category_id"): ("integer", None, "YES", None),
    ("posts", "author_id"): ("integer", None, "YES", None),
    ("categories", "id"): ("integer", None, "NO", "nextval('categories_id_seq'::regclass)"),
    ("categories", "name"): ("character varying", 50, "NO", None),
    ("categories", "slug"): ("character varying", 50, "NO", None),
    ("categories", "color"): ("character varying", 7, "NO", "'#6b7280'::character varying"),
}
SEED_INDEXES = {
    "idx_users_username": "CREATE INDEX idx_users_username ON public.users USING btree (username)",
    "idx_posts_author": "CREATE INDEX idx_posts_author ON public.posts USING btree (author)",
    "idx_posts_created_at": (
        "CREATE INDEX idx_posts_created_at ON public.posts USING btree (created_at DESC)"
    ),
}


def test_postgresql_schema_matches_the_seed_ddl(database_env: EnvFactory) -> None:
    settings = settings_for(database_env("postgresql"))
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    columns = query(
        settings,
        "users",
        """SELECT table_name, column_name, data_type, character_maximum_length,
                  is_nullable, column_default
           FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name IN ('users', 'posts', 'categories')""",
    )
    assert {(row[0], row[1]): row[2:] for row in columns} == SEED_COLUMNS
    indexes = dict(
        query(
            settings,
            "users",
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        )
    )
    for name, definition in SEED_INDEXES.items():
        assert indexes[name] == definition
    unique = query(
        settings,
        "users",
        """SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc
           JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)
           WHERE tc.constraint_type = 'UNIQUE' AND tc.table_schema = 'public'""",
    )
    assert sorted(unique) == [
        ("categories", "name"),
        ("categories", "slug"),
        ("users", "username"),
        ("users", "username_key"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_upgrades_at_once_both_succeed(backend: str, database_env: EnvFactory) -> None:
    database = database_env(backend)
    settings = settings_for(database)
    env = {**os.environ, **database}
    command = [sys.executable, "-m", "titanium", "db", "upgrade"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err.decode()
        assert f"blog: schema at {head_revision('blog')}".encode() in out
    assert asyncio.run(current_revision(settings, "blog")) == head_revision("blog")


def test_readiness_accepts_a_newer_schema_but_not_an_older_one(database_env: EnvFactory) -> None:
    from titanium.db.engine import Database
    from titanium.db.revisions import check_schema
    from titanium.errors import Unavailable

    settings = settings_for(database_env("sqlite"))
    asyncio.run(upgrade_schema(settings, "blog"))

    async def readiness_at(revision: str) -> dict[str, str]:
        db = Database(settings, "blog")
        try:
            async with db.write() as conn:
                await conn.execute(
                    text("UPDATE alembic_version_blog SET version_num = :r"), {"r": revision}
                )
            return await check_schema(db)
        finally:
            await db.dispose()

    # The migration Job of the next release ran first: old pods keep serving.
    assert asyncio.run(readiness_at("0003_next_release"))["schema"] == "ahead of code"
    head = head_revision("blog")
    with pytest.raises(Unavailable, match=f"schema of blog is at 0001, expected {head}"):
        asyncio.run(readiness_at("0001"))
    assert asyncio.run(readiness_at(head))["schema_revision"] == head


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_write_block_leaves_nothing_behind(backend: str, database_env: EnvFactory) -> None:
    from titanium.db.engine import Database
    from titanium.db.tables import categories

    settings = settings_for(database_env(backend))
    asyncio.run(upgrade_schema(settings, "blog"))

    async def write_then_fail() -> None:
        db = Database(settings, "blog")
        try:
            async with db.write() as conn:
                await conn.execute(categories.insert().values(name="half", slug="half"))
                raise RuntimeError("the second step of the write failed")
        finally:
            await db.dispose()

    with pytest.raises(RuntimeError):
        asyncio.run(write_then_fail())
    assert query(settings, "blog", "SELECT count(*) FROM categories WHERE slug = 'half'") == [(0,)]


def test_the_registry_names_every_data_service_its_tables_and_history() -> None:
    assert set(DATA_SERVICES) == set(get_args(DataService)) == set(REVISIONS) == set(METADATA)
    for service in DATA_SERVICES:
        assert set(SERVICES[service].tables) == set(METADATA[service].tables), service
        versions = Path(alembic_config(service).get_main_option("script_location") or "")
        assert (versions / "versions").is_dir(), versions
    owners = [s.id for s in SERVICES.values() if s.tables]
    assert tuple(owners) == DATA_SERVICES
