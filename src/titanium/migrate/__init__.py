"""SQLite → PostgreSQL data migration: preflight, COPY-speed load, verification.

The library is `titanium.migrate.run` (`migrate_sqlite_to_postgres`, `verify`);
`titanium migrate` (`titanium.migrate.cli`) is a thin shell over it, and
docs/migration.md is the operators' runbook. Nothing is imported here, so the
`titanium` command starts without loading the migration's dependencies.
"""
