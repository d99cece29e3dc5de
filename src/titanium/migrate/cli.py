"""`titanium migrate ...`: parse, call the library, print, exit with the outcome's code."""

import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from titanium.errors import TitaniumError

if TYPE_CHECKING:
    from titanium.migrate.progress import ProgressSink
    from titanium.migrate.report import MigrationResult
    from titanium.migrate.target import Target

# Exit code of an aborted run; the library's constant, repeated so that
# `titanium --help` does not import the migration machinery.
EXIT_ABORTED = 5

app = typer.Typer(
    help="Move the data of the SQLite files into PostgreSQL, and check it got there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class OnError(StrEnum):
    """What preflight problems do."""

    stop = "stop"
    skip = "skip"


UsersDb = Annotated[
    Path, typer.Option("--users-db", help="user-service's SQLite file (users).", show_default=False)
]
BlogDb = Annotated[
    Path,
    typer.Option(
        "--blog-db", help="blog-service's SQLite file (posts, categories).", show_default=False
    ),
]
To = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="Target postgresql://user:password@host:port/db (default: the POSTGRES_* settings).",
        show_default=False,
    ),
]
ReportFile = Annotated[
    Path | None, typer.Option("--report", help="Also write the result as JSON to FILE.")
]


def _abort(command: str, message: str, report: Path | None, console: Console) -> None:
    from titanium.migrate.report import MigrationResult, Status

    console.print(f"[bold red]aborted[/] (exit {EXIT_ABORTED}): {escape(message)}", soft_wrap=True)
    if report is not None:
        _write_report(MigrationResult(command, status=Status.ABORTED, message=message), report)
    raise typer.Exit(EXIT_ABORTED)


def _write_report(result: "MigrationResult", path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n", "utf-8")


def _target(to: str | None) -> "Target":
    from titanium.config import load_settings
    from titanium.migrate.target import target_from_settings

    return target_from_settings(load_settings(), to)


def _execute(
    command: str, work: Callable[["ProgressSink"], "MigrationResult"], report: Path | None
) -> None:
    from titanium.migrate.progress import LogProgress, RichProgress
    from titanium.migrate.report import render

    # Logs (not a terminal) get wide lines: a wrapped summary is hard to grep.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    progress: ProgressSink
    context: AbstractContextManager[object]
    if console.is_terminal:
        rich_progress = RichProgress(console)
        progress, context = rich_progress, rich_progress
    else:
        # Not a terminal (a pipe, a CI log, a Kubernetes Job): plain lines on stderr.
        progress, context = LogProgress(sys.stderr), nullcontext()
    try:
        with context:
            result = work(progress)
    except TitaniumError as exc:
        _abort(command, exc.message, report, console)
        return
    render(result, console)
    if report is not None:
        _write_report(result, report)
    raise typer.Exit(result.exit_code)


@app.command("sqlite-to-postgres")
def sqlite_to_postgres(
    users_db: UsersDb,
    blog_db: BlogDb,
    to: To = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Preflight only; write nothing to the target.")
    ] = False,
    on_error: Annotated[
        OnError,
        typer.Option(
            "--on-error", help="stop: load nothing if any row is bad; skip: load the good rows."
        ),
    ] = OnError.stop,
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects",
            help="JSON-lines file for rejected rows (default with skip: titanium-rejects.jsonl).",
        ),
    ] = None,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="Replace the data a non-empty target holds.")
    ] = False,
    report: ReportFile = None,
) -> None:
    """Copy users, categories and posts from SQLite into PostgreSQL, checked and verified.

    Exit codes: 0 success, 3 completed with rejected rows, 4 verification
    mismatch (rolled back), 5 aborted (nothing written).
    """

    from titanium.migrate.run import MigrationOptions, migrate_sqlite_to_postgres

    def work(progress: "ProgressSink") -> "MigrationResult":
        options = MigrationOptions(
            users_db=users_db,
            blog_db=blog_db,
            target=_target(to),
            dry_run=dry_run,
            on_error="skip" if on_error is OnError.skip else "stop",
            rejects=rejects,
            truncate=truncate,
        )
        return migrate_sqlite_to_postgres(options, progress)

    _execute("sqlite-to-postgres", work, report)


@app.command("verify")
def verify_command(
    users_db: UsersDb, blog_db: BlogDb, to: To = None, report: ReportFile = None
) -> None:
    """Compare row counts and checksums of the SQLite files and the target again.

    Exit codes: 0 everything matches, 4 mismatch, 5 aborted.
    """
    from titanium.migrate.run import verify

    _execute("verify", lambda progress: verify(users_db, blog_db, _target(to), progress), report)
