"""Queries on the users table."""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from titanium.db.engine import Database
from titanium.db.tables import users, utc_now
from titanium.errors import Conflict


@dataclass(frozen=True)
class User:
    """A row of users."""

    id: int
    username: str
    email: str
    password_hash: str
    created_at: datetime | None


class UserRepository:
    """Reads and writes users."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, username: str, email: str, password_hash: str) -> User:
        """Insert a user; Conflict when the username is taken."""
        try:
            async with self.db.write() as conn:
                row = (
                    await conn.execute(
                        sa.insert(users)
                        .values(
                            username=username,
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
        """The user with this exact username, if any."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(users).where(users.c.username == username))
            ).one_or_none()
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
        """Delete a user; False when there was none."""
        async with self.db.write() as conn:
            result = await conn.execute(sa.delete(users).where(users.c.id == user_id))
        return bool(result.rowcount)

    async def count(self) -> int:
        """Number of users."""
        async with self.db.read() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one()
            )
