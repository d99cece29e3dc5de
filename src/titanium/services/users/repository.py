"""Queries on the users table."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from titanium.db.engine import Database
from titanium.db.tables import users, utc_now
from titanium.errors import Conflict
from titanium.security.usernames import assign_keys, key_or_none, username_key


@dataclass(frozen=True)
class User:
    """A row of users."""

    id: int
    username: str
    username_key: str | None
    email: str
    password_hash: str
    created_at: datetime | None


class UserRepository:
    """Reads and writes users, each method one unit of work run by the Database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, username: str, email: str, password_hash: str) -> User:
        """Insert a user; Conflict when the username or a look-alike of it is taken.

        BadUsername (a 422) when the username policy refuses the name.
        """
        key = username_key(username)
        try:
            return await self.db.run_write(_create, username, key, email, password_hash)
        except Conflict:
            raise Conflict("username already taken") from None

    async def by_username(self, username: str) -> User | None:
        """The user this name means: the exact spelling first, then the look-alike key.

        The exact spelling wins so that an account left without a key (a later
        look-alike from before keys, revision 0003) is still reached by its own
        spelling; any other spelling of a group reaches the account holding the
        key. Keys are unique and so are spellings, so at most two rows match.
        """
        exact = users.c.username == username
        key = key_or_none(username)
        matches = exact if key is None else sa.or_(exact, users.c.username_key == key)
        query = sa.select(users).where(matches).order_by(sa.case((exact, 0), else_=1)).limit(1)
        return await self.db.run_read(_one_user, query)

    async def by_id(self, user_id: int) -> User | None:
        """The user with this id, if any."""
        return await self.db.run_read(_one_user, _BY_ID, {"user_id": user_id})

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace a user's password hash (after an upgrade to argon2id)."""
        await self.db.run_write(_set_password_hash, user_id, password_hash)

    async def delete(self, user_id: int) -> bool:
        """Delete a user; False when there was none.

        The key of a deleted account goes to the oldest keyless look-alike
        left, if any, so that a group never loses its key to a newcomer.
        """
        return await self.db.run_write(_delete, user_id)

    async def count(self) -> int:
        """Number of users."""
        return await self.db.run_read(_count)


# Built once: every write to blog-service looks its author up by id.
_BY_ID = sa.select(users).where(users.c.id == sa.bindparam("user_id"))


def _one_user(
    conn: sa.Connection, query: sa.Select[Any], params: dict[str, Any] | None = None
) -> User | None:
    row = conn.execute(query, params).one_or_none()
    return User(**row._mapping) if row else None


def _create(conn: sa.Connection, username: str, key: str, email: str, password_hash: str) -> User:
    row = conn.execute(
        sa.insert(users)
        .values(
            username=username,
            username_key=key,
            email=email,
            password_hash=password_hash,
            created_at=utc_now(),
        )
        .returning(*users.c)
    ).one()
    return User(**row._mapping)


def _set_password_hash(conn: sa.Connection, user_id: int, password_hash: str) -> None:
    conn.execute(sa.update(users).where(users.c.id == user_id).values(password_hash=password_hash))


def _delete(conn: sa.Connection, user_id: int) -> bool:
    deleted = conn.execute(
        sa.delete(users).where(users.c.id == user_id).returning(users.c.username_key)
    ).one_or_none()
    if deleted is not None and deleted.username_key is not None:
        _hand_on_key(conn, deleted.username_key)
    return deleted is not None


def _count(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())


def _hand_on_key(conn: sa.Connection, key: str) -> None:
    # Keyless rows are the few look-alikes older than keys: reading them all is cheap.
    keyless = conn.execute(
        sa.select(users.c.id, users.c.username).where(users.c.username_key.is_(None))
    ).all()
    heirs = [(row.id, row.username) for row in keyless if key_or_none(row.username) == key]
    for heir, assigned in assign_keys(heirs).items():
        if assigned is not None:
            conn.execute(sa.update(users).where(users.c.id == heir).values(username_key=assigned))
