"""Add categories (seeded with the old system's three) and posts.category_id.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from titanium.db.seed import SEED_CATEGORIES

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    categories = op.create_table(
        "categories",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("slug", sa.String(50), nullable=False),
        sa.Column("color", sa.String(7), nullable=False, server_default="#6b7280"),
        sa.PrimaryKeyConstraint("id", name="pk_categories"),
        sa.UniqueConstraint("name", name="uq_categories_name"),
        sa.UniqueConstraint("slug", name="uq_categories_slug"),
        sqlite_autoincrement=True,
    )
    op.bulk_insert(categories, list(SEED_CATEGORIES))
    # Nullable: rows that come from the seed's schema have no category.
    with op.batch_alter_table("posts", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("category_id", sa.Integer, nullable=True))
        batch.create_foreign_key(
            "fk_posts_category_id_categories", "categories", ["category_id"], ["id"]
        )
    op.create_index("idx_posts_category_id", "posts", ["category_id"])
    _restore_created_at_index()


def downgrade() -> None:
    op.drop_index("idx_posts_category_id", table_name="posts")
    with op.batch_alter_table("posts", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("fk_posts_category_id_categories", type_="foreignkey")
        batch.drop_column("category_id")
    _restore_created_at_index()
    op.drop_table("categories")


def _restore_created_at_index() -> None:
    # SQLite batch mode recreates the table from reflection, which loses the
    # DESC of this index; dropping and creating it keeps both dialects identical.
    op.drop_index("idx_posts_created_at", table_name="posts", if_exists=True)
    op.create_index("idx_posts_created_at", "posts", [sa.text("created_at DESC")])
