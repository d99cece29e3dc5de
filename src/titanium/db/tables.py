"""The one schema of Titanium, as SQLAlchemy Core tables.

The Alembic revisions under `migrations/` are the only DDL that runs; these
tables are what the code queries with, and `tests/test_migrations.py` checks
that both agree on SQLite and PostgreSQL.
"""

from datetime import UTC, datetime

import sqlalchemy as sa

# Explicit constraint names so both dialects (and Alembic batch mode) agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Field limits of the seed's PostgreSQL schema; the API enforces them on both backends.
USERNAME_MAX = 100
EMAIL_MAX = 255
PASSWORD_HASH_MAX = 255
TITLE_MAX = 200
AUTHOR_MAX = USERNAME_MAX
CATEGORY_NAME_MAX = 50
CATEGORY_SLUG_MAX = 50
COLOR_LENGTH = 7
# The largest value of an INTEGER column (PostgreSQL's int4): ids and offsets past it
# are refused as input rather than failing in the database.
INTEGER_MAX = 2**31 - 1

users_metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
blog_metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

users = sa.Table(
    "users",
    users_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(USERNAME_MAX), nullable=False, unique=True),
    # `security.usernames.username_key` of the username: what uniqueness and look-ups
    # compare. NULL for the later look-alikes of accounts older than it (revision 0003).
    sa.Column("username_key", sa.String(USERNAME_MAX), nullable=True, unique=True),
    sa.Column("email", sa.String(EMAIL_MAX), nullable=False),
    sa.Column("password_hash", sa.String(PASSWORD_HASH_MAX), nullable=False),
    sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    sa.Index("idx_users_username", "username"),
    sqlite_autoincrement=True,
)

# Login and registration budgets, shared by every replica of user-service
# (`security/ratelimit.py`): the stamps of one key's attempts still in its window.
THROTTLE_KEY_LENGTH = 64  # a SHA-256 in hex
throttle_attempts = sa.Table(
    "throttle_attempts",
    users_metadata,
    sa.Column("key", sa.String(THROTTLE_KEY_LENGTH), primary_key=True),
    sa.Column("stamps", sa.Text, nullable=False, server_default=""),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

categories = sa.Table(
    "categories",
    blog_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(CATEGORY_NAME_MAX), nullable=False, unique=True),
    sa.Column("slug", sa.String(CATEGORY_SLUG_MAX), nullable=False, unique=True),
    sa.Column("color", sa.String(COLOR_LENGTH), nullable=False, server_default="#6b7280"),
    sqlite_autoincrement=True,
)

posts = sa.Table(
    "posts",
    blog_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.String(TITLE_MAX), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("author", sa.String(AUTHOR_MAX), nullable=False),
    sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    sa.Column("updated_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    sa.Column("category_id", sa.Integer, sa.ForeignKey("categories.id"), nullable=True),
    # The account (users.id) that wrote the post; `author` stays its display name.
    # No foreign key: users live in user-service's database. NULL for a legacy
    # post no account could be proven to have written (blog revision 0004).
    sa.Column("author_id", sa.Integer, nullable=True),
    sa.Index("idx_posts_author", "author"),
    sa.Index("idx_posts_author_id", "author_id"),
    sa.Index("idx_posts_category_id", "category_id"),
    sqlite_autoincrement=True,
)
sa.Index("idx_posts_created_at", posts.c.created_at.desc())

METADATA: dict[str, sa.MetaData] = {"users": users_metadata, "blog": blog_metadata}


def utc_now() -> datetime:
    """The current time as naive UTC, the way the TIMESTAMP columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def stored_utc(value: datetime | None) -> datetime | None:
    """A TIMESTAMP column's value as aware UTC (the columns hold naive UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
