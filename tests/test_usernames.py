"""Look-alike usernames: the key, registration, login, and the migration of today's rows."""

import asyncio
import logging
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fixtures.migrate.builders import SEED_POSTS_DDL, SEED_USERS_DDL, create, insert, query, target
from support.database import BACKENDS, run_sql
from support.env import settings_for
from support.inprocess import running, sqlite_settings
from titanium.config import Settings
from titanium.contracts import CREDENTIALS_PATH
from titanium.db.engine import Database
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import USERNAME_MAX, users
from titanium.migrate.report import Status
from titanium.migrate.run import MigrationOptions, migrate_sqlite_to_postgres, verify
from titanium.security import passwords
from titanium.security.usernames import BadUsername, assign_keys, username_key
from titanium.services.users.app import create_app as create_users
from titanium.services.users.repository import UserRepository

EnvFactory = Callable[[str], dict[str, str]]
PASSWORD = "correct horse"

RENE_NFC = "ren\u00e9"
RENE_NFD = "rene\u0301"
# The look-alikes of `alice`, and what each must come to.
FOLD_TO_ALICE = ["Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "\U0001d41alice"]
REFUSED = {
    "\u0430lice": "mixes scripts (Cyrillic, Latin)",  # Cyrillic a
    "ali\u200dce": "U+200D ZERO WIDTH JOINER",
}


@pytest.mark.parametrize("name", FOLD_TO_ALICE)
def test_case_width_and_compatibility_forms_fold_to_one_key(name: str) -> None:
    assert username_key(name) == "alice"


def test_both_unicode_forms_of_a_name_have_one_key() -> None:
    assert RENE_NFC != RENE_NFD
    assert username_key(RENE_NFC) == username_key(RENE_NFD) == RENE_NFC


@pytest.mark.parametrize(("name", "reason"), REFUSED.items())
def test_mixed_scripts_and_joiners_are_refused(name: str, reason: str) -> None:
    with pytest.raises(BadUsername, match=re.escape(reason)) as refused:
        username_key(name)
    assert refused.value.field == "username"


@pytest.mark.parametrize(
    ("name", "key"),
    [("Stra\u00dfe", "strasse"), ("\ufb01sh", "fish"), ("\u5c71\u7530\u305f\u308d\u3046", None)],
)
def test_what_else_folds_and_what_mixes_are_allowed(name: str, key: str | None) -> None:
    # ß folds to ss, a ligature to its letters; Han with Hiragana is one writing system.
    assert username_key(name) == (key or name)


def test_the_key_is_its_own_key_and_must_fit_the_column() -> None:
    for name in [*FOLD_TO_ALICE, RENE_NFD, "Stra\u00dfe", "\u0130stanbul"]:
        key = username_key(name)
        assert username_key(key) == key
        assert key == unicodedata.normalize("NFKC", key.casefold())
    assert len(username_key("\u00df" * (USERNAME_MAX // 2))) == USERNAME_MAX
    with pytest.raises(BadUsername, match="once normalised"):
        username_key("\u00df" * (USERNAME_MAX // 2 + 1))


def test_the_oldest_of_a_group_gets_the_key() -> None:
    accounts = [(7, "ALICE"), (3, "alice"), (9, "\u0430lice"), (4, "bob"), (5, RENE_NFD)]
    assert assign_keys(accounts, taken={"bob"}) == {
        3: "alice",
        4: None,
        5: RENE_NFC,
        7: None,
        9: None,
    }


async def register(client: httpx.AsyncClient, username: str) -> httpx.Response:
    body = {"username": username, "email": "someone@example.com", "password": PASSWORD}
    return await client.post("/api/users", json=body)


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    """The credential check auth-service calls at login: the account's id, or the status."""
    answer = await client.post(CREDENTIALS_PATH, json={"username": username, "password": password})
    return answer.json()["id"] if answer.status_code == 200 else answer.status_code


@pytest.fixture
def installation(tmp_path: Path, keys: dict[str, str]) -> Settings:
    return sqlite_settings(tmp_path, keys, registration_max_per_client=100)


@pytest.mark.anyio
async def test_look_alikes_cannot_register_next_to_an_account(installation: Settings) -> None:
    async with running(create_users(installation)) as client:
        first = await register(client, "alice")
        assert first.status_code == 201, first.text
        alice = first.json()["id"]
        for name in FOLD_TO_ALICE:
            taken = await register(client, name)
            assert (taken.status_code, taken.json()["message"]) == (409, "username already taken")
        for name, reason in REFUSED.items():
            refused = await register(client, name)
            assert refused.status_code == 422, name
            assert refused.json()["errors"][0]["field"] == "username"
            assert reason in refused.json()["message"]
        # Any spelling of the group reaches alice's account, with alice's password.
        for name in ["alice", *FOLD_TO_ALICE]:
            assert await login(client, name) == alice
            profile = await client.get(f"/api/users/{name}")
            assert profile.json()["username"] == "alice"
        assert await login(client, "ALICE", "wrong password") == 401
        assert await login(client, "\u0430lice") == 401


@pytest.mark.anyio
async def test_the_display_spelling_is_kept_in_nfc(installation: Settings) -> None:
    async with running(create_users(installation)) as client:
        created = await register(client, "Ren" + "E\u0301")
        assert created.status_code == 201
        assert created.json()["username"] == "Ren\u00c9"
        assert (await register(client, RENE_NFC)).status_code == 409
        assert (await register(client, RENE_NFD)).status_code == 409
        assert await login(client, RENE_NFD) == created.json()["id"]
        assert (await client.get(f"/api/users/{RENE_NFC}")).json()["username"] == "Ren\u00c9"


# Rows as the original system and revision 0002 let them be: every look-alike its own account.
LEGACY = [
    (1, "alice", "alice-password"),
    (2, "Alice", "Alice-password"),
    (3, "\uff41\uff4c\uff49\uff43\uff45", "fullwidth-password"),
    (4, "\u0430lice", "cyrillic-password"),
    (5, "ali\u200dce", "joiner-password"),
    (6, RENE_NFD, "nfd-password"),
    (7, RENE_NFC, "nfc-password"),
    (8, "bob", "bob-password"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_revision_0003_keys_the_oldest_and_keeps_the_others_working(
    backend: str, database_env: EnvFactory, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env = {**database_env(backend), **keys, "REGISTRATION_MAX_PER_CLIENT": "100"}
    settings = settings_for(env)
    asyncio.run(upgrade_schema(settings, "users", "0002"))
    legacy = sa.table(
        "users",
        sa.column("id", sa.Integer),
        sa.column("username", sa.String),
        sa.column("email", sa.String),
        sa.column("password_hash", sa.String),
    )
    rows = [
        {
            "id": i,
            "username": n,
            "email": "x@example.com",
            "password_hash": passwords.hash_password(p),
        }
        for i, n, p in LEGACY
    ]
    run_sql(settings, "users", legacy.insert().values(rows))
    with caplog.at_level(logging.WARNING, logger="titanium.migrations"):
        assert asyncio.run(upgrade_schema(settings, "users")) == "0003"
    found = run_sql(settings, "users", sa.select(users.c.id, users.c.username_key))
    expected = {1: "alice", 2: None, 3: None, 4: None, 5: None, 6: RENE_NFC, 7: None, 8: "bob"}
    assert {row.id: row.username_key for row in found} == expected
    assert {row.username for row in run_sql(settings, "users", sa.select(users))} == {
        name for _, name, _ in LEGACY
    }
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"account {i} " in warned for i in (2, 3, 4, 5, 7))
    assert "account 1 " not in warned and "account 8 " not in warned
    asyncio.run(_after_0003(settings))


async def _after_0003(settings: Settings) -> None:
    async with running(create_users(settings)) as client:
        # Each keyless account logs in by its exact spelling, with its own password.
        for user_id, name, password in LEGACY:
            assert await login(client, name, password) == user_id, name
            assert await login(client, name, "not the password") == 401
        # Any other spelling of a group reaches the oldest account.
        assert await login(client, "ALICE", "alice-password") == 1
        assert await login(client, "ALICE", "Alice-password") == 401
        # And the group is closed to newcomers.
        for name in ("ALICE", "aLiCe", RENE_NFC.upper()):
            assert (await register(client, name)).status_code == 409, name
    await _deleting_the_keyholder_hands_the_key_on(settings)


async def _deleting_the_keyholder_hands_the_key_on(settings: Settings) -> None:
    db = Database(settings, "users")
    try:
        repository = UserRepository(db)
        assert await repository.delete(1)
        heir = await repository.by_username("ALICE")
        # The oldest look-alike left takes the key, so a newcomer still cannot.
        assert heir is not None and (heir.id, heir.username_key) == (2, "alice")
        fullwidth = await repository.by_username(LEGACY[2][1])
        assert fullwidth is not None and (fullwidth.id, fullwidth.username_key) == (3, None)
    finally:
        await db.dispose()


def test_a_source_from_before_keys_gets_them_in_postgresql(
    database_env: EnvFactory, keys: dict[str, str], tmp_path: Path
) -> None:
    # The original system's files have no username_key: the move computes it, by 0003's rule.
    users_db = create(tmp_path / "users.db", SEED_USERS_DDL)
    blog_db = create(tmp_path / "blog.db", SEED_POSTS_DDL)
    insert(users_db, "users", [
        {"username": name, "email": "x@example.com", "password_hash": "h"}
        for _, name, _ in LEGACY
    ])  # fmt: skip
    pg_env = {**database_env("postgresql"), **keys}
    options = MigrationOptions(users_db, blog_db, target(pg_env))
    result = migrate_sqlite_to_postgres(options)
    assert result.status is Status.OK, result.message
    assert any("no username_key: computed" in note for note in result.notes)
    rows = query(pg_env, "SELECT id, username_key FROM users ORDER BY id")
    assert [tuple(row) for row in rows] == [
        (1, "alice"), (2, None), (3, None), (4, None), (5, None), (6, RENE_NFC), (7, None),
        (8, "bob"),
    ]  # fmt: skip
    assert verify(users_db, blog_db, target(pg_env)).status is Status.OK
