from titanium.db.migrations.environment import run_migrations

run_migrations("blog")
