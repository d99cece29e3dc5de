"""Add throttle_attempts: login and registration budgets shared by every replica.

One row per budget key (a SHA-256 of the budget and who it counts), holding the
wall-clock stamps of the attempts still inside its window. A transaction that
counts an attempt locks the row with its upsert, so concurrent attempts on any
replica are counted one after the other (`security/ratelimit.py`).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "throttle_attempts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("stamps", sa.Text, nullable=False, server_default=""),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_throttle_attempts"),
    )
    op.create_index("ix_throttle_attempts_expires_at", "throttle_attempts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_throttle_attempts_expires_at", table_name="throttle_attempts")
    op.drop_table("throttle_attempts")
