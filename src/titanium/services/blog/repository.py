"""Queries on posts and categories."""

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from titanium.db.engine import Database
from titanium.db.tables import CATEGORY_SLUG_MAX, categories, posts, utc_now
from titanium.errors import Conflict, InvalidInput, NotFound

EXCERPT_LENGTH = 120
DEFAULT_CATEGORY = "Uncategorized"

_joined = posts.outerjoin(categories, posts.c.category_id == categories.c.id)
_category_columns = (
    categories.c.id.label("category_id"),
    categories.c.name.label("category_name"),
    categories.c.slug.label("category_slug"),
    categories.c.color.label("category_color"),
)
_post_columns = (
    posts.c.id,
    posts.c.title,
    posts.c.author,
    posts.c.created_at,
    posts.c.updated_at,
    *_category_columns,
)


def slugify(name: str) -> str:
    """URL slug of a category name: lower case, runs of other characters become '-'.

    Cut to the slug column's length after lower-casing, which can lengthen a name
    ('İ' becomes 'i' and a combining dot, so 50 of them a 99-character slug). The
    cut falls between code points and every one left is a letter, digit or '-', so
    no character is split; two long names that agree up to the cut share a slug and
    so, as names with the same slug always do, a category.
    """
    slug = re.sub(r"[\W_]+", "-", name.strip().lower()).strip("-")
    return slug[:CATEGORY_SLUG_MAX].rstrip("-")


def excerpt(head: str) -> str:
    """The first 120 characters with line breaks as spaces, plus '...' when cut."""
    cut = head[:EXCERPT_LENGTH]
    flat = cut.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return flat + "..." if len(head) > EXCERPT_LENGTH else flat


def _category(row: Any) -> dict[str, Any] | None:
    if row.category_id is None:
        return None
    return {
        "id": row.category_id,
        "name": row.category_name,
        "slug": row.category_slug,
        "color": row.category_color,
    }


def _post(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "content": row.content,
        "author": row.author,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "category": _category(row),
    }


@dataclass(frozen=True)
class PostFilter:
    """Which posts a list shows."""

    category_slug: str | None = None
    author: str | None = None

    def apply(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """Add the WHERE clauses of this filter to a query over posts."""
        if self.category_slug is not None:
            # A subquery, not the join: the count then reads idx_posts_category_id alone.
            slug = sa.select(categories.c.id).where(categories.c.slug == self.category_slug)
            query = query.where(posts.c.category_id == slug.scalar_subquery())
        if self.author is not None:
            query = query.where(posts.c.author == self.author)
        return query


class BlogRepository:
    """Reads and writes posts and categories."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_posts(
        self, where: PostFilter, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of posts, newest first, and the total number matching the filter."""
        head = sa.func.substr(posts.c.content, 1, EXCERPT_LENGTH + 1).label("head")
        page = (
            where.apply(sa.select(*_post_columns, head).select_from(_joined))
            .order_by(posts.c.created_at.desc(), posts.c.id.desc())
            .offset(offset)
            .limit(limit)
        )
        # Counted on posts alone (no join, no wide rows), so an index-only scan answers it.
        total = where.apply(sa.select(sa.func.count()).select_from(posts))
        async with self.db.read() as conn:
            rows = (await conn.execute(page)).all()
            count = int((await conn.execute(total)).scalar_one())
        items = [
            {
                "id": row.id,
                "title": row.title,
                "author": row.author,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
                "excerpt": excerpt(row.head),
                "category": _category(row),
            }
            for row in rows
        ]
        return items, count

    async def get_post(self, post_id: int) -> dict[str, Any]:
        """A whole post; NotFound when there is none with this id."""
        async with self.db.read() as conn:
            return await self._get(conn, post_id)

    async def create_post(
        self, author: str, title: str, content: str, category_id: int | None
    ) -> dict[str, Any]:
        """Insert a post and return it as stored."""
        now = utc_now()
        async with self.db.write() as conn:
            post_id = (
                await conn.execute(
                    sa.insert(posts)
                    .values(
                        title=title,
                        content=content,
                        author=author,
                        category_id=category_id,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(posts.c.id)
                )
            ).scalar_one()
            return await self._get(conn, post_id)

    async def author_of(self, post_id: int) -> str:
        """The author of a post; NotFound when there is none."""
        async with self.db.read() as conn:
            author = (
                await conn.execute(sa.select(posts.c.author).where(posts.c.id == post_id))
            ).scalar_one_or_none()
        if author is None:
            raise NotFound("no such post")
        return str(author)

    async def update_post(self, post_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply column changes (and a new updated_at) to a post; return it."""
        async with self.db.write() as conn:
            if changes:
                result = await conn.execute(
                    sa.update(posts)
                    .where(posts.c.id == post_id)
                    .values(**changes, updated_at=utc_now())
                )
                if result.rowcount == 0:
                    raise NotFound("no such post")
            return await self._get(conn, post_id)

    async def delete_post(self, post_id: int) -> None:
        """Delete a post; NotFound when there is none."""
        async with self.db.write() as conn:
            result = await conn.execute(sa.delete(posts).where(posts.c.id == post_id))
        if result.rowcount == 0:
            raise NotFound("no such post")

    async def list_categories(self) -> list[dict[str, Any]]:
        """Every category with its number of posts."""
        query = (
            sa.select(*categories.c, sa.func.count(posts.c.id).label("post_count"))
            .select_from(categories.outerjoin(posts, posts.c.category_id == categories.c.id))
            .group_by(*categories.c)
            .order_by(categories.c.id)
        )
        async with self.db.read() as conn:
            return [dict(row._mapping) for row in (await conn.execute(query)).all()]

    async def existing_category(self, category_id: int) -> int:
        """Check a category id exists; InvalidInput (422) when it does not."""
        async with self.db.read() as conn:
            found = (
                await conn.execute(sa.select(categories.c.id).where(categories.c.id == category_id))
            ).scalar_one_or_none()
        if found is None:
            raise InvalidInput("unknown category", field="category_id")
        return category_id

    async def category_for_name(self, name: str) -> int:
        """Id of the category with this name (or its slug), created when new."""
        slug = slugify(name)
        if not slug:
            raise InvalidInput("must contain a letter or digit", field="category_name")
        lookup = sa.select(categories.c.id).where(
            sa.or_(categories.c.name == name, categories.c.slug == slug)
        )
        async with self.db.read() as conn:
            found = (await conn.execute(lookup)).scalar()
        if found is not None:
            return int(found)
        try:
            async with self.db.write() as conn:
                return int(
                    (
                        await conn.execute(
                            sa.insert(categories)
                            .values(name=name, slug=slug)
                            .returning(categories.c.id)
                        )
                    ).scalar_one()
                )
        except Conflict:
            # Another request created it first; use theirs.
            async with self.db.read() as conn:
                return int((await conn.execute(lookup)).scalar_one())

    async def count(self) -> dict[str, int]:
        """Numbers of posts and categories."""
        async with self.db.read() as conn:
            post_count = (
                await conn.execute(sa.select(sa.func.count()).select_from(posts))
            ).scalar_one()
            category_count = (
                await conn.execute(sa.select(sa.func.count()).select_from(categories))
            ).scalar_one()
        return {"posts": int(post_count), "categories": int(category_count)}

    async def _get(self, conn: AsyncConnection, post_id: int) -> dict[str, Any]:
        row = (
            await conn.execute(
                sa.select(*_post_columns, posts.c.content)
                .select_from(_joined)
                .where(posts.c.id == post_id)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("no such post")
        return _post(row)
