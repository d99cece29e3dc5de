"""Queries on posts and categories."""

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from titanium.db.engine import Database
from titanium.db.seed import SEED_CATEGORIES
from titanium.db.tables import CATEGORY_SLUG_MAX, categories, posts, stored_utc, utc_now
from titanium.errors import Conflict, Forbidden, InvalidInput, NotFound

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
    posts.c.author_id,
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


def _category_ref(
    category_id: int | None, name: str, slug: str, color: str
) -> dict[str, Any] | None:
    """A post's category as the API shows it; None for a post without one."""
    if category_id is None:
        return None
    return {"id": category_id, "name": name, "slug": slug, "color": color}


def _post_fields(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "content": row.content,
        "author": row.author,
        "author_id": row.author_id,
        "created_at": stored_utc(row.created_at),
        "updated_at": stored_utc(row.updated_at),
    }


def _post(row: Any) -> dict[str, Any]:
    category = (row.category_id, row.category_name, row.category_slug, row.category_color)
    return {**_post_fields(row), "category": _category_ref(*category)}


@dataclass(frozen=True)
class PostFilter:
    """Which posts a list shows."""

    category_slug: str | None = None
    author: str | None = None

    @property
    def params(self) -> dict[str, str]:
        """The values of the filter's bind parameters (see `_list_statements`)."""
        given = {"category_slug": self.category_slug, "author": self.author}
        return {name: value for name, value in given.items() if value is not None}


def _where(query: sa.Select[Any], category: bool, author: bool) -> sa.Select[Any]:
    """Add the WHERE clauses of a filter (by category slug, by author) as bind parameters."""
    if category:
        # A subquery, not the join: the count then reads idx_posts_category_id alone.
        slug = sa.select(categories.c.id).where(categories.c.slug == sa.bindparam("category_slug"))
        query = query.where(posts.c.category_id == slug.scalar_subquery())
    if author:
        query = query.where(posts.c.author == sa.bindparam("author"))
    return query


# One post with its category, built once (as the list's statements are).
_ONE_POST = (
    sa.select(*_post_columns, posts.c.content)
    .select_from(_joined)
    .where(posts.c.id == sa.bindparam("post_id"))
)


@functools.cache
def _list_statements(category: bool, author: bool) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The page and the count of a list filtered this way, built once.

    Built per request they cost an eighth of an uncached page's time (the select
    itself, then its cache key, which SQLAlchemy keeps on a statement it has seen).
    """
    head = sa.func.substr(posts.c.content, 1, EXCERPT_LENGTH + 1).label("head")
    # Counted on posts alone (no join, no wide rows), so an index-only scan answers it.
    total = _where(sa.select(sa.func.count()).select_from(posts), category, author)
    # The count rides along as an uncorrelated subquery, which both databases
    # evaluate once: one statement, one round trip and one snapshot for the page
    # and X-Total-Count. Only a page past the end, which has no row to carry it,
    # asks again.
    counted = total.correlate(None).scalar_subquery().label("total")
    page = (
        _where(sa.select(*_post_columns, head, counted).select_from(_joined), category, author)
        .order_by(posts.c.created_at.desc(), posts.c.id.desc())
        .offset(sa.bindparam("offset"))
        .limit(sa.bindparam("limit"))
    )
    return page, total


@dataclass(frozen=True)
class CategoryChoice:
    """The category a write names: by id, by name (created when new), or neither."""

    name: str | None = None
    category_id: int | None = None

    def check(self) -> None:
        """Refuse a name without a slug before any transaction starts."""
        if self.name is not None and not slugify(self.name):
            raise InvalidInput("must contain a letter or digit", field="category_name")


# Never removed when empty: the schema's seed (old clients use ids 1-3) and the
# default that every post without a category goes to.
KEPT_SLUGS = (*(row["slug"] for row in SEED_CATEGORIES), slugify(DEFAULT_CATEGORY))
# How often a write retries taking a category that another transaction was
# creating or removing at the same moment (each retry sees that one committed).
CATEGORY_ATTEMPTS = 3


def _resolve(conn: sa.Connection, choice: CategoryChoice) -> Any:
    """The chosen category's row, held for this transaction; None when none was chosen."""
    if choice.category_id is not None:
        found = conn.execute(
            sa.select(*categories.c)
            .where(categories.c.id == choice.category_id)
            .with_for_update(read=True, key_share=True)
        ).one_or_none()
        if found is None:
            raise InvalidInput("unknown category", field="category_id")
        return found
    if choice.name is not None:
        return _category_named(conn, choice.name)
    return None


def _category_named(conn: sa.Connection, name: str) -> Any:
    """The row of the category with this name (or its slug), created when new.

    The row is locked FOR KEY SHARE until the transaction ends, so a concurrent
    removal of an emptied category cannot take it away before the post refers to
    it. A category being removed right now is waited for and then created anew;
    one being created by another transaction is waited for and then used.
    (SQLite serialises write transactions, so it needs none of this.)
    """
    slug = slugify(name)
    lookup = (
        sa.select(*categories.c)
        .where(sa.or_(categories.c.name == name, categories.c.slug == slug))
        .with_for_update(read=True, key_share=True)
    )
    for _attempt in range(CATEGORY_ATTEMPTS):
        found = conn.execute(lookup).first()
        if found is not None:
            return found
        try:
            with conn.begin_nested():
                created = conn.execute(
                    sa.insert(categories).values(name=name, slug=slug).returning(*categories.c)
                )
                return created.one()
        except sa_exc.IntegrityError:
            # Another transaction created it first; the next lookup sees theirs.
            continue
    raise Conflict("the category changed concurrently, retry")


def _owned(conn: sa.Connection, post_id: int, author_id: int) -> Any:
    """The post's row (locked for this transaction) when `author_id` wrote it."""
    row = conn.execute(
        sa.select(posts.c.author_id, posts.c.category_id)
        .where(posts.c.id == post_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound("no such post")
    # A legacy post no account could be proven to have written belongs to nobody.
    if row.author_id is None or row.author_id != author_id:
        raise Forbidden("only the author may change this post")
    return row


def _remove_if_empty(conn: sa.Connection, category_id: int | None) -> None:
    """Delete a category no post uses any more, unless it is one that is always kept.

    A transaction attaching a post to it holds a KEY SHARE lock on its row (from
    `_category_named`, or the foreign key check itself). SKIP LOCKED then passes
    over the row instead of waiting: the category is in use, so it stays, and no
    two writes wait on each other (a post moved from X to Y while another moves
    from Y to X would otherwise deadlock). Once the lock is taken, the emptiness
    check runs in a newer snapshot than any attachment committed before it.
    """
    if category_id is None:
        return
    locked = conn.execute(
        sa.select(categories.c.id)
        .where(categories.c.id == category_id, categories.c.slug.not_in(KEPT_SLUGS))
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if locked is None:
        return
    in_use = sa.exists().where(posts.c.category_id == category_id)
    conn.execute(sa.delete(categories).where(categories.c.id == category_id, ~in_use))


class BlogRepository:
    """Reads and writes posts and categories.

    Each method runs one plain function of a connection through the Database
    (run_read/run_write): on SQLite a single hop to a worker thread.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_posts(
        self, where: PostFilter, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of posts, newest first, and the total number matching the filter."""
        return await self.db.run_read(_list_posts, where, offset, limit)

    async def get_post(self, post_id: int) -> dict[str, Any]:
        """A whole post; NotFound when there is none with this id."""
        return await self.db.run_read(_get_post, post_id)

    async def create_post(
        self, author: str, author_id: int, title: str, content: str, category: CategoryChoice
    ) -> dict[str, Any]:
        """Insert a post (in the default category when none is chosen) and return it as stored."""
        category.check()
        return await self.db.run_write(
            _create_post, author, author_id, title, content, category, utc_now()
        )

    async def update_post(
        self, post_id: int, author_id: int, changes: dict[str, Any], category: CategoryChoice
    ) -> dict[str, Any]:
        """Apply column changes (and a new updated_at) to the caller's post; return it.

        NotFound without the post, Forbidden when `author_id` did not write it. A
        category the post leaves is removed in the same transaction when it is empty.
        """
        return await self.db.run_write(_update_post, post_id, author_id, changes, category)

    async def delete_post(self, post_id: int, author_id: int) -> None:
        """Delete the caller's post, and its category when that is left empty.

        NotFound without the post, Forbidden when `author_id` did not write it.
        """
        await self.db.run_write(_delete_post, post_id, author_id)

    async def list_categories(self) -> list[dict[str, Any]]:
        """Every category with its number of posts."""
        return await self.db.run_read(_list_categories)

    async def count(self) -> dict[str, int]:
        """Numbers of posts and categories."""
        return await self.db.run_read(_count)


def _list_posts(
    conn: sa.Connection, where: PostFilter, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    page, total = _list_statements(where.category_slug is not None, where.author is not None)
    params = where.params
    rows = conn.execute(page, {**params, "offset": offset, "limit": limit}).all()
    count = int(rows[0].total if rows else conn.execute(total, params).scalar_one())
    # Unpacked by position: a Row's attribute lookups were a fifth of the CPU of
    # an uncached page. The order is _post_columns', then head and total.
    items = []
    for (
        post_id, title, author, author_id, created_at, updated_at,
        category_id, category_name, category_slug, category_color, head, _total,
    ) in rows:  # fmt: skip
        category = _category_ref(category_id, category_name, category_slug, category_color)
        items.append(
            {
                "id": post_id,
                "title": title,
                "author": author,
                "author_id": author_id,
                "created_at": stored_utc(created_at),
                "updated_at": stored_utc(updated_at),
                "excerpt": excerpt(head),
                "category": category,
            }
        )
    return items, count


def _get_post(conn: sa.Connection, post_id: int) -> dict[str, Any]:
    row = conn.execute(_ONE_POST, {"post_id": post_id}).one_or_none()
    if row is None:
        raise NotFound("no such post")
    return _post(row)


def _create_post(
    conn: sa.Connection,
    author: str,
    author_id: int,
    title: str,
    content: str,
    category: CategoryChoice,
    now: datetime,
) -> dict[str, Any]:
    chosen = _resolve(conn, category)
    if chosen is None:
        chosen = _category_named(conn, DEFAULT_CATEGORY)
    # RETURNING the whole row, and the category as resolved: no read-back.
    row = conn.execute(
        sa.insert(posts)
        .values(
            title=title,
            content=content,
            author=author,
            author_id=author_id,
            category_id=chosen.id,
            created_at=now,
            updated_at=now,
        )
        .returning(*posts.c)
    ).one()
    ref = _category_ref(chosen.id, chosen.name, chosen.slug, chosen.color)
    return {**_post_fields(row), "category": ref}


def _update_post(
    conn: sa.Connection,
    post_id: int,
    author_id: int,
    changes: dict[str, Any],
    category: CategoryChoice,
) -> dict[str, Any]:
    before = _owned(conn, post_id, author_id)
    category.check()
    values = dict(changes)
    chosen = _resolve(conn, category)
    category_id = None if chosen is None else chosen.id
    if category_id is not None:
        values["category_id"] = category_id
    if values:
        conn.execute(
            sa.update(posts).where(posts.c.id == post_id).values(**values, updated_at=utc_now())
        )
    if category_id is not None and category_id != before.category_id:
        _remove_if_empty(conn, before.category_id)
    return _get_post(conn, post_id)


def _delete_post(conn: sa.Connection, post_id: int, author_id: int) -> None:
    before = _owned(conn, post_id, author_id)
    conn.execute(sa.delete(posts).where(posts.c.id == post_id))
    _remove_if_empty(conn, before.category_id)


def _list_categories(conn: sa.Connection) -> list[dict[str, Any]]:
    query = (
        sa.select(*categories.c, sa.func.count(posts.c.id).label("post_count"))
        .select_from(categories.outerjoin(posts, posts.c.category_id == categories.c.id))
        .group_by(*categories.c)
        .order_by(categories.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query).all()]


def _count(conn: sa.Connection) -> dict[str, int]:
    post_count = conn.execute(sa.select(sa.func.count()).select_from(posts)).scalar_one()
    category_count = conn.execute(sa.select(sa.func.count()).select_from(categories)).scalar_one()
    return {"posts": int(post_count), "categories": int(category_count)}
