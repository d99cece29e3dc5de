"""Queries on the users table."""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

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
    """Reads and writes users."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, username: str, email: str, password_hash: str) -> User:
        """Insert a user; Conflict when the username or a look-alike of it is taken.

        BadUsername (a 422) when the username policy refuses the name.
        """
        key = username_key(username)
        try:
            async with self.db.write() as conn:
                row = (
                    await conn.execute(
                        sa.insert(users)
                        .values(
                            username=username,
                            username_key=key,
                            email=email,
                            password_hash=password_hash,
                            created_at=utc_now(),
                        )
                        .returning(*users.c)
                    )
                ).one()
        except Conflict:
            raise Conflict("username already taken") from None
        return User(**row._mapping)

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
        async with self.db.read() as conn:
            row = (await conn.execute(query)).one_or_none()
        return User(**row._mapping) if row else None

    async def by_id(self, user_id: int) -> User | None:
        """The user with this id, if any."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).one_or_none()
        return User(**row._mapping) if row else None

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace a user's password hash (after an upgrade to argon2id)."""
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(users).where(users.c.id == user_id).values(password_hash=password_hash)
            )

    async def delete(self, user_id: int) -> bool:
        """Delete a user; False when there was none.

        The key of a deleted account goes to the oldest keyless look-alike
        left, if any, so that a group never loses its key to a newcomer.
        """
        async with self.db.write() as conn:
            deleted = (
                await conn.execute(
                    sa.delete(users).where(users.c.id == user_id).returning(users.c.username_key)
                )
            ).one_or_none()
            if deleted is not None and deleted.username_key is not None:
                await _hand_on_key(conn, deleted.username_key)
        return deleted is not None

    async def count(self) -> int:
        """Number of users."""
        async with self.db.read() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one()
            )


async def _hand_on_key(conn: AsyncConnection, key: str) -> None:
    # Keyless rows are the few look-alikes older than keys: reading them all is cheap.
    keyless = (
        await conn.execute(
            sa.select(users.c.id, users.c.username).where(users.c.username_key.is_(None))
        )
    ).all()
    heirs = [(row.id, row.username) for row in keyless if key_or_none(row.username) == key]
    for heir, assigned in assign_keys(heirs).items():
        if assigned is not None:
            await conn.execute(
                sa.update(users).where(users.c.id == heir).values(username_key=assigned)
            )
