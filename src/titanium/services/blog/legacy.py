"""Linking legacy posts (no `author_id`) to the accounts that wrote them.

Posts written before blog revision 0004, by a release older than it, or loaded
from the original system's files know their author only by name. A name is not
an account: after a deletion anyone may register it again. A legacy post is
linked to the account with its author's exact username only when that account
is not younger than the post (`users.created_at <= posts.created_at`), so a
later re-registration of the name never takes it; otherwise it stays unowned
(still shown under its name, editable by no one). An account without a
`created_at` can only come from the original system's files (Titanium always
writes one), so it predates every Titanium post and is linked by name, as that
system did; a post without a `created_at` goes only to such an account.

This reads user-service's database and writes blog-service's (two SQLite
files, or one PostgreSQL database), so it cannot be an Alembic revision of
either: `titanium db upgrade`, `titanium run` and `titanium migrate
sqlite-to-postgres` run it after the schema is at head. It only ever looks at
rows whose `author_id` is NULL, so running it again changes nothing unless new
legacy rows appeared (posts written by old pods during a rollout).
"""

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from titanium.config import Settings
from titanium.db.engine import Database
from titanium.db.revisions import REVISIONS, read_revision
from titanium.db.tables import posts, users

# The first blog revision with posts.author_id.
AUTHOR_ID_REVISION = "0004"
# Author names looked up per query (well under SQLite's 32766 bound parameters).
NAMES_PER_BATCH = 500


@dataclass(frozen=True)
class LinkReport:
    """What one linking run did."""

    linked: int
    unowned: int

    @property
    def message(self) -> str:
        """One line for the operator."""
        return (
            f"posts: linked {self.linked} legacy posts to the accounts that wrote them; "
            f"{self.unowned} posts have no provable author and stay unowned"
        )


async def link_legacy_posts(settings: Settings) -> LinkReport | None:
    """Link every post without `author_id` that the rule allows; None when a schema is not ready.

    Not ready means the blog schema is older than revision 0004 (or newer than
    this code knows) or user-service's schema does not exist yet.
    """
    blog = Database(settings, "blog")
    accounts = Database(settings, "users")
    try:
        blog_revision = await blog.run_read(read_revision, "blog")
        known = REVISIONS["blog"]
        if blog_revision not in known or known.index(blog_revision) < known.index(
            AUTHOR_ID_REVISION
        ):
            return None
        if await accounts.run_read(read_revision, "users") is None:
            return None
        names = await blog.run_read(_unlinked_names)
        linked = 0
        for start in range(0, len(names), NAMES_PER_BATCH):
            found = await accounts.run_read(_accounts_named, names[start : start + NAMES_PER_BATCH])
            if found:
                linked += await blog.run_write(_link, found)
        return LinkReport(linked, await blog.run_read(_unowned))
    finally:
        await blog.dispose()
        await accounts.dispose()


_UNLINKED = posts.c.author_id.is_(None)


def _unlinked_names(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.select(posts.c.author).where(_UNLINKED).distinct()).scalars())


def _accounts_named(conn: sa.Connection, names: list[str]) -> list[Any]:
    query = sa.select(users.c.id, users.c.username, users.c.created_at)
    return list(conn.execute(query.where(users.c.username.in_(names))).all())


def _link(conn: sa.Connection, accounts: list[Any]) -> int:
    """Link each account's unlinked posts not older than the account; how many were linked."""
    linked = 0
    for account in accounts:
        linking = sa.update(posts).where(_UNLINKED, posts.c.author == account.username)
        if account.created_at is not None:
            linking = linking.where(posts.c.created_at >= account.created_at)
        linked += conn.execute(linking.values(author_id=account.id)).rowcount
    return linked


def _unowned(conn: sa.Connection) -> int:
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(posts).where(_UNLINKED)).scalar_one()
    )
