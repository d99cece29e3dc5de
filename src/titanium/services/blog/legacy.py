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
        async with blog.read() as conn:
            blog_revision = await conn.run_sync(read_revision, "blog")
        known = REVISIONS["blog"]
        if blog_revision not in known or known.index(blog_revision) < known.index(
            AUTHOR_ID_REVISION
        ):
            return None
        async with accounts.read() as conn:
            if await conn.run_sync(read_revision, "users") is None:
                return None
        unlinked = posts.c.author_id.is_(None)
        async with blog.read() as conn:
            names = (
                (await conn.execute(sa.select(posts.c.author).where(unlinked).distinct()))
                .scalars()
                .all()
            )
        linked = 0
        for start in range(0, len(names), NAMES_PER_BATCH):
            chunk = names[start : start + NAMES_PER_BATCH]
            async with accounts.read() as conn:
                found = (
                    await conn.execute(
                        sa.select(users.c.id, users.c.username, users.c.created_at).where(
                            users.c.username.in_(chunk)
                        )
                    )
                ).all()
            if not found:
                continue
            async with blog.write() as conn:
                for account in found:
                    linking = sa.update(posts).where(unlinked, posts.c.author == account.username)
                    if account.created_at is not None:
                        linking = linking.where(posts.c.created_at >= account.created_at)
                    result = await conn.execute(linking.values(author_id=account.id))
                    linked += result.rowcount
        async with blog.read() as conn:
            unowned = int(
                (
                    await conn.execute(
                        sa.select(sa.func.count()).select_from(posts).where(unlinked)
                    )
                ).scalar_one()
            )
        return LinkReport(linked, unowned)
    finally:
        await blog.dispose()
        await accounts.dispose()
