"""Tie posts to the account that wrote them: posts.author_id (users.id).

Nullable and without a foreign key (users live in user-service's database, on
SQLite in another file). Existing rows stay NULL here: linking them needs the
users table too, so `titanium db upgrade` (and `titanium run`, `titanium migrate
sqlite-to-postgres`) does it afterwards (`services/blog/legacy.py`).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both dialects: no table rebuild, no lock held for long.
    op.add_column("posts", sa.Column("author_id", sa.Integer, nullable=True))
    op.create_index("idx_posts_author_id", "posts", ["author_id"])


def downgrade() -> None:
    op.drop_index("idx_posts_author_id", table_name="posts")
    with op.batch_alter_table("posts", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("author_id")
    # SQLite batch mode recreates the table from reflection, which loses the DESC
    # of this index (as in revision 0002).
    op.drop_index("idx_posts_created_at", table_name="posts", if_exists=True)
    op.create_index("idx_posts_created_at", "posts", [sa.text("created_at DESC")])
