"""Create posts as in the seed's PostgreSQL DDL.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("author", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("updated_at", sa.DateTime, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("id", name="pk_posts"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_posts_author", "posts", ["author"])
    op.create_index("idx_posts_created_at", "posts", [sa.text("created_at DESC")])


def downgrade() -> None:
    op.drop_index("idx_posts_created_at", table_name="posts")
    op.drop_index("idx_posts_author", table_name="posts")
    op.drop_table("posts")
