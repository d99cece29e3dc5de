"""Notify listeners of every change to posts and categories (PostgreSQL only).

blog-service caches rendered reads while it LISTENs on `titanium_blog`; these
statement-level triggers make every write (the API, a migration, psql) announce
itself, so a cache is never left stale. SQLite has no such channel, so this
revision does nothing there: the cache watches `PRAGMA data_version` instead
(`services/blog/cache.py`).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("posts", "categories")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION titanium_blog_changed() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_notify('titanium_blog', TG_TABLE_NAME); RETURN NULL; END $$"
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION titanium_blog_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_changed ON {table}")
    op.execute("DROP FUNCTION titanium_blog_changed()")
