"""The `titanium` command: a thin shell over the library.

Commands parse arguments and print; the work lives in importable modules.
Library errors become one-line messages and a non-zero exit code here.
"""

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from titanium.config import DataService, ServiceName, Settings, load_settings
from titanium.errors import ConfigError, TitaniumError
from titanium.migrate.cli import app as migrate_app
from titanium.services.registry import DATA_SERVICES, SERVICES, service_name

app = typer.Typer(
    help="Titanium: a microservice blog platform on SQLite or PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations (Alembic), one history per data service.")
keys_app = typer.Typer(help="Token signing keys.")
secrets_app = typer.Typer(help="Sealed secret inputs of a Kubernetes overlay (SOPS + age).")
monitoring_app = typer.Typer(help="A local Prometheus with the cluster's rules and labels.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")
app.add_typer(monitoring_app, name="monitoring")
# Sub-commands that live in their own packages are registered below, one line each.
app.add_typer(migrate_app, name="migrate")

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"titanium: {message}", err=True)
    raise typer.Exit(code)


def guarded(func: Callable[..., T], *args: Any) -> T:
    """Call `func(*args)`, turning Titanium errors into one-line failures."""
    try:
        return func(*args)
    except ConfigError as exc:
        fail(f"configuration error: {exc.message}", 2)
    except TitaniumError as exc:
        fail(exc.message)


def _settings() -> Settings:
    return guarded(load_settings)


@app.command()
def serve(
    service: Annotated[ServiceName, typer.Argument(help="Which service to run.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the service's own).")] = None,
) -> None:
    """Run one service (the container entrypoint)."""
    import uvicorn

    from titanium.logs import configure_logging
    from titanium.memory import tune_malloc
    from titanium.services.registry import app_factory
    from titanium.web.server import bounded_protocol

    tune_malloc()  # before any thread exists: the arena cap applies to new threads
    settings = _settings()
    configure_logging(settings.log_level, service_name(service), settings.log_format)
    asgi = guarded(app_factory(service), settings)
    if settings.internal_token is None:
        # Without it user-service's internal routes would answer anyone who reaches the
        # port; every way Titanium is started (`titanium run`, the overlays, compose) sets it.
        fail(
            "configuration error: INTERNAL_TOKEN is required (32+ characters, same in all four)", 2
        )
    # What is loaded by now lives as long as the process. Frozen, it is no longer
    # walked by each full garbage collection, a pause of 30-55 ms here that every
    # request in flight waits out.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        asgi,
        host=host,
        port=port or SERVICES[service].port,
        loop="uvloop",
        # httptools, with limits on the request head that uvicorn does not set.
        http=bounded_protocol(settings),
        access_log=False,
        log_config=None,
        server_header=False,
        # The gateway takes the client from X-Forwarded-For only when the peer is one
        # of TRUSTED_PROXIES (uvicorn walks the list from the right and skips trusted
        # hops); the services read the gateway's entry themselves (web/clients.py).
        proxy_headers=service == "gateway" and bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        timeout_graceful_shutdown=10,
    )


@db_app.command("upgrade")
def db_upgrade(
    service: Annotated[
        DataService | None, typer.Option(help="Whose schema (default: every data service).")
    ] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply schema migrations (idempotent; safe to run from several processes at once)."""
    from titanium.db.migrations import upgrade_schema

    settings = _settings()
    for name in (service,) if service else DATA_SERVICES:
        reached = guarded(asyncio.run, upgrade_schema(settings, name, revision))
        typer.echo(f"{name}: schema at {reached} ({settings.backend})")
    _link_legacy_posts(settings)


def _link_legacy_posts(settings: Settings) -> None:
    """Tie posts known only by their author's name to that account (needs both schemas)."""
    from titanium.services.blog.legacy import link_legacy_posts

    report = guarded(asyncio.run, link_legacy_posts(settings))
    if report is not None:
        typer.echo(report.message)


@db_app.command("downgrade")
def db_downgrade(
    # Required, with no "every service": revision names mean different things per service.
    service: Annotated[DataService, typer.Option(help="Whose schema.")],
    revision: Annotated[str, typer.Argument(help="Target revision, or `base` for none.")],
) -> None:
    """Revert schema migrations down to REVISION (destroys the data of dropped tables)."""
    from titanium.db.migrations import downgrade_schema

    settings = _settings()
    reached = guarded(asyncio.run, downgrade_schema(settings, service, revision))
    typer.echo(f"{service}: schema at {reached or 'base'} ({settings.backend})")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of each data service next to the code's head."""
    from titanium.db.migrations import current_revision
    from titanium.db.revisions import head_revision

    settings = _settings()
    for name in DATA_SERVICES:
        current = guarded(asyncio.run, current_revision(settings, name))
        typer.echo(f"{name}: {current or 'base'} (head {head_revision(name)}, {settings.backend})")


@keys_app.command("generate")
def keys_generate(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the PEM files.")] = Path(
        "var/keys"
    ),
) -> None:
    """Create an Ed25519 key pair for signing tokens (kept if it exists)."""
    from titanium.security.tokens import generate_key_pair

    private, public = generate_key_pair(directory)
    typer.echo(f"private key: {private}\npublic key:  {public}")


OverlayArgument = Annotated[
    Path, typer.Argument(help="The overlay directory, e.g. k8s/overlays/solid-cloud.")
]


@secrets_app.command("seal")
def secrets_seal(overlay: OverlayArgument) -> None:
    """Encrypt the overlay's plaintext secret inputs with sops (.sops.yaml); delete them."""
    from titanium.ops.sops import seal

    for path in guarded(seal, overlay):
        typer.echo(f"sealed: {path}")


@secrets_app.command("unseal")
def secrets_unseal(overlay: OverlayArgument) -> None:
    """Decrypt the overlay's sealed inputs to their git-ignored plaintext (kubectl apply -k)."""
    from titanium.ops.sops import unseal

    for path in guarded(unseal, overlay):
        typer.echo(f"unsealed: {path}")


@monitoring_app.command("prometheus")
def monitoring_prometheus(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the files, e.g. var/prometheus.")
    ],
    postgres_exporter: Annotated[
        str | None, typer.Option(help="Also scrape a postgres_exporter, e.g. 127.0.0.1:9187.")
    ] = None,
    scrape_interval: Annotated[str, typer.Option(help="Scrape and rule interval.")] = "15s",
) -> None:
    """Write prometheus.yml and rules.yml for `titanium run`'s ports; print how to start it."""
    import shlex

    from titanium.ops.monitoring import prometheus_command, write_local

    config = write_local(
        directory, postgres_exporter=postgres_exporter, scrape_interval=scrape_interval
    )
    typer.echo(shlex.join(prometheus_command(config)))


@app.command()
def run(
    gateway_port: Annotated[int, typer.Option(help="api-gateway port.")] = SERVICES["gateway"].port,
    users_port: Annotated[int, typer.Option(help="user-service port.")] = SERVICES["users"].port,
    auth_port: Annotated[int, typer.Option(help="auth-service port.")] = SERVICES["auth"].port,
    blog_port: Annotated[int, typer.Option(help="blog-service port.")] = SERVICES["blog"].port,
) -> None:
    """Run all four services on this machine (SQLite under ./var unless USE_POSTGRES=true)."""
    from titanium.db.migrations import upgrade_schema
    from titanium.runner import Stack
    from titanium.security.tokens import generate_key_pair

    settings = _settings()
    env = dict(os.environ)
    if not (settings.jwt_private_key or settings.jwt_private_key_file):
        private, public = generate_key_pair(settings.data_dir / "keys")
        env["JWT_PRIVATE_KEY_FILE"] = str(private.resolve())
        env["JWT_PUBLIC_KEY_FILE"] = str(public.resolve())
    for name in DATA_SERVICES:
        guarded(asyncio.run, upgrade_schema(settings, name))
    _link_legacy_posts(settings)
    where = "PostgreSQL" if settings.use_postgres else f"SQLite in {settings.data_dir}/"
    typer.echo(f"titanium: schema at head ({where}); starting services")

    ports: dict[ServiceName, int] = {
        "gateway": gateway_port,
        "users": users_port,
        "auth": auth_port,
        "blog": blog_port,
    }
    stack = Stack(env=env, ports=ports)
    guarded(stack.start)
    for started in SERVICES:
        typer.echo(f"  {service_name(started):<13} {stack.url(started)}  ready")
    typer.echo(f"\nBlog: {stack.url('gateway')}/blog/   (Ctrl-C stops everything)")

    def _terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while not stack.exited():
            time.sleep(0.5)
        fail(f"{', '.join(service_name(s) for s in stack.exited())} stopped unexpectedly")
    except KeyboardInterrupt:
        typer.echo("\ntitanium: stopping", err=True)
    finally:
        stack.stop()


@app.command()
def verify(
    url: Annotated[str, typer.Argument(help="The gateway, e.g. http://127.0.0.1:8000")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
) -> None:
    """Check a running deployment end to end: health, readiness and a full CRUD journey."""
    from rich.console import Console

    from titanium.ops.journey import run_journey
    from titanium.ops.report import print_steps

    steps = asyncio.run(run_journey(url, timeout))
    print_steps(steps, json_output, Console(soft_wrap=True))
    if not all(step.ok for step in steps):
        raise typer.Exit(1)


@app.command()
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "titanium-prod",
    pod: Annotated[
        str | None, typer.Option(help="Diagnose this pod's configuration (runs inside it).")
    ] = None,
    context: Annotated[
        str | None, typer.Option(help="Fail unless kubectl's current context is this one.")
    ] = None,
    cluster: Annotated[
        bool, typer.Option("--cluster/--no-cluster", help="Run kubectl checks.")
    ] = True,
) -> None:
    """Diagnose configuration, database and cluster; each problem with its one-line fix."""
    from rich.console import Console

    from titanium.ops.checks import Status
    from titanium.ops.doctor import diagnose, diagnose_pod
    from titanium.ops.kubectl import Kubectl, cluster_checks
    from titanium.ops.report import print_checks

    kubectl = Kubectl()
    if pod:
        checks = diagnose_pod(kubectl, namespace, pod)
    else:
        checks = asyncio.run(diagnose(dict(os.environ)))
    if cluster:
        checks += cluster_checks(kubectl, namespace, context)
    print_checks(checks, json_output, Console(soft_wrap=True))
    if any(check.status is Status.FAIL for check in checks):
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `titanium` command."""
    app()


if __name__ == "__main__":
    main()
