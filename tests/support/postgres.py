"""PostgreSQL servers: the one a test run (or benchmark) shares, and private ones it owns.

`PostgresServer` is what both kinds do: connect as the superuser, create and drop
throwaway databases, and give the environment that points a service at one.
`SharedServer` is a server someone else runs (the local one, or the one
`TITANIUM_TEST_POSTGRES_URL` names); `PrivateServer` is started from an empty data
directory with initdb and pg_ctl, so a test may stop, freeze or misconfigure it.
"""

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url

ADMIN_URL = os.environ.get(
    "TITANIUM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class PostgresServer:
    """A PostgreSQL server reached as a superuser through `url` (its admin database)."""

    def __init__(self, url: URL, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.created: list[str] = []

    def dsn(self, database: str | None = None) -> str:
        """libpq URL of one of this server's databases (the admin database by default)."""
        url = self.url if database is None else self.url.set(database=database)
        return url.render_as_string(hide_password=False)

    async def connect(self, database: str | None = None) -> asyncpg.Connection:
        """A superuser connection to one of this server's databases."""
        return await asyncpg.connect(self.dsn(database), timeout=self.connect_timeout)

    def execute(self, sql: str, database: str | None = None) -> None:
        """Run one statement (outside a transaction, so CREATE DATABASE works)."""

        async def go() -> None:
            conn = await self.connect(database)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def create_database(self, prefix: str = "titanium_test") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting its sessions."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        """Drop every database `create_database` made."""
        for name in self.created:
            self.drop_database(name)
        self.created.clear()

    def backend_pids(self, database: str) -> list[int]:
        """Process ids of the server backends connected to `database`."""

        async def query() -> list[int]:
            conn = await self.connect()
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
            finally:
                await conn.close()
            return [int(row["pid"]) for row in rows]

        return asyncio.run(query())

    def env(self, database: str = "postgres", password: str | None = None) -> dict[str, str]:
        """Environment selecting PostgreSQL database `database` on this server."""
        return {
            "USE_POSTGRES": "true",
            "POSTGRES_HOST": self.url.host or "127.0.0.1",
            "POSTGRES_PORT": str(self.url.port or 5432),
            "POSTGRES_DB": database,
            "POSTGRES_USER": self.url.username or "postgres",
            # A trusting server takes any password; the settings check wants a non-empty one.
            "POSTGRES_PASSWORD": password or self.url.password or "trust-auth",
        }


class SharedServer(PostgresServer):
    """A server run by someone else; only the databases made here are dropped."""

    def __init__(self, url: str = ADMIN_URL) -> None:
        super().__init__(make_url(url), connect_timeout=5)


class PrivateServer(PostgresServer):
    """A PostgreSQL instance of this test run only: its own data directory, port and password."""

    def __init__(self, root: Path, port: int, password: str) -> None:
        url = URL.create(
            "postgresql",
            username="postgres",
            password=password,
            host="127.0.0.1",
            port=port,
            database="postgres",
        )
        super().__init__(url, connect_timeout=60)
        self.root = root
        self.data = root / "data"
        self.port = port
        self.password = password
        self.bin = (
            Path("/usr/lib/postgresql") / sorted(os.listdir("/usr/lib/postgresql"))[-1] / "bin"
        )

    def _as_postgres(self, *command: str) -> subprocess.CompletedProcess[str]:
        # initdb and pg_ctl refuse to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, check=True
        )

    def init(self) -> None:
        """Create the cluster with password (scram) authentication."""
        password_file = self.root / "pw"
        password_file.write_text(self.password)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=scram-sha-256", f"--pwfile={password_file}",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast: open sessions are cut)."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )
