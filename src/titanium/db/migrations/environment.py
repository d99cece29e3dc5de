"""What every service's Alembic `env.py` runs: online migrations on a given connection."""

from alembic import context
from sqlalchemy import Connection

from titanium.config import DataService
from titanium.db.revisions import version_table
from titanium.db.tables import METADATA


def run_migrations(service: DataService) -> None:
    """Run the pending revisions of `service` on the connection `_apply()` hands in."""
    connection: Connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=METADATA[service],
        version_table=version_table(service),
        # SQLite cannot ALTER most things; batch mode recreates tables there.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
