"""Add users.username_key: one account per look-alike group of usernames.

The key (`security.usernames.username_key`: NFKC, PRECIS UsernameCaseMapped
with case folding, one script) is computed in Python for every existing row,
oldest first. Today's look-alikes (`alice`, `Alice`, fullwidth letters, both
Unicode forms of `rené`...) stay as they are, with their spellings, passwords
and posts: the oldest account of each group (lowest id) gets the key, every
later one and every name the policy now refuses (a Cyrillic a in a Latin
name, a zero width joiner) gets NULL and keeps logging in by its exact
spelling. A new registration that folds to a group's key is refused. Each
account left without a key is logged (`titanium.migrations`), so that an
operator can see them.

Revision ID: 0003
Revises: 0002
"""

import logging

import sqlalchemy as sa
from alembic import op

from titanium.security.usernames import assign_keys

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("titanium.migrations")

_users = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("username", sa.String),
    sa.column("username_key", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("username_key", sa.String(100), nullable=True))
        batch.create_unique_constraint("uq_users_username_key", ["username_key"])
    connection = op.get_bind()
    accounts = connection.execute(sa.select(_users.c.id, _users.c.username)).all()
    keys = assign_keys((row.id, row.username) for row in accounts)
    keyed = [{"user_id": user_id, "key": key} for user_id, key in keys.items() if key is not None]
    if keyed:
        connection.execute(
            _users.update()
            .where(_users.c.id == sa.bindparam("user_id"))
            .values(username_key=sa.bindparam("key")),
            keyed,
        )
    names = {row.id: row.username for row in accounts}
    for user_id, key in sorted(keys.items()):
        if key is None:
            log.warning(
                "users: account %d (%r) has no username key: a look-alike of an older "
                "account, or a name the username policy refuses; it logs in by its exact "
                "spelling only",
                user_id,
                names[user_id],
            )


def downgrade() -> None:
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("uq_users_username_key", type_="unique")
        batch.drop_column("username_key")
