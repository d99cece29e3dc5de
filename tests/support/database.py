"""Both backends, and statements run on a service's database outside the services."""

import asyncio
from typing import Any

from sqlalchemy import Executable, Row

from titanium.config import DataService, Settings

BACKENDS = ["sqlite", "postgresql"]


def run_sql(settings: Settings, service: DataService, statement: Executable) -> list[Row[Any]]:
    """Execute one SQLAlchemy statement on a service's database, committed; return rows."""

    from titanium.db.engine import Database

    async def go() -> list[Row[Any]]:
        db = Database(settings, service)
        try:
            async with db.write() as conn:
                result = await conn.execute(statement)
                return list(result.all()) if result.returns_rows else []
        finally:
            await db.dispose()

    return asyncio.run(go())
