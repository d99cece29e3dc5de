"""Outcome of a migration or verification: exit codes, JSON report, summary table."""

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from titanium.migrate.problems import PreflightResult

# Exit codes (documented in docs/migration.md). 1 and 2 keep their usual
# meanings (an unexpected crash; a command-line usage error).
EXIT_OK = 0
EXIT_REJECTED = 3
EXIT_MISMATCH = 4
EXIT_ABORTED = 5


class Status(StrEnum):
    """How a run ended."""

    OK = "ok"
    REJECTED = "completed_with_rejects"
    MISMATCH = "verification_mismatch"
    ABORTED = "aborted"

    @property
    def exit_code(self) -> int:
        """The process exit code for this outcome."""
        return {
            Status.OK: EXIT_OK,
            Status.REJECTED: EXIT_REJECTED,
            Status.MISMATCH: EXIT_MISMATCH,
            Status.ABORTED: EXIT_ABORTED,
        }[self]


@dataclass
class TableReport:
    """Per-table figures, like pgloader's summary."""

    table: str
    rows_read: int = 0
    rows_rejected: int = 0
    rows_loaded: int = 0
    seconds: float = 0.0
    source_checksum: str | None = None
    target_checksum: str | None = None
    target_rows: int | None = None
    next_id: int | None = None

    @property
    def checksum_match(self) -> bool | None:
        """True/False once both sides were computed, else None."""
        if self.source_checksum is None or self.target_checksum is None:
            return None
        return (
            self.source_checksum == self.target_checksum
            and self.target_rows == self.rows_read - self.rows_rejected
        )

    @property
    def rows_per_second(self) -> float:
        """Load rate of this table."""
        return self.rows_loaded / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The figures as JSON."""
        return {
            "table": self.table,
            "rows_read": self.rows_read,
            "rows_rejected": self.rows_rejected,
            "rows_loaded": self.rows_loaded,
            "target_rows": self.target_rows,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
            "checksum_match": self.checksum_match,
            "next_id": self.next_id,
        }


@dataclass
class MigrationResult:
    """Everything a run found and did."""

    command: str
    status: Status = Status.OK
    message: str = ""
    dry_run: bool = False
    source: dict[str, str] = field(default_factory=dict)
    target: str = ""
    tables: list[TableReport] = field(default_factory=list)
    preflight: PreflightResult = field(default_factory=PreflightResult)
    phases: dict[str, float] = field(default_factory=dict)
    rejects_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The process exit code."""
        return self.status.exit_code

    def table(self, name: str) -> TableReport:
        """The report of one table (created on first use)."""
        for report in self.tables:
            if report.table == name:
                return report
        report = TableReport(name)
        self.tables.append(report)
        return report

    def as_json(self) -> dict[str, Any]:
        """The whole result as a JSON-ready dict (the `--report` file)."""
        preflight = self.preflight
        return {
            "command": self.command,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "message": self.message,
            "dry_run": self.dry_run,
            "source": self.source,
            "target": self.target,
            "tables": [t.as_json() for t in self.tables],
            "phases_seconds": {k: round(v, 3) for k, v in self.phases.items()},
            "problems": {
                "total": preflight.problem_count,
                "rows_rejected": preflight.rejected,
                "by_reason": [
                    {"table": t, "column": c, "code": code, "count": n}
                    for (t, c, code), n in sorted(preflight.counts.items())
                ],
                "first": [p.as_json() for p in preflight.problems],
            },
            "rejects_file": str(self.rejects_path) if self.rejects_path else None,
            "notes": self.notes,
        }


def _yes_no(value: bool | None) -> str:
    if value is None:
        return "-"
    return "[green]yes[/]" if value else "[bold red]NO[/]"


def render(result: MigrationResult, console: Console, max_problems: int = 20) -> None:
    """Print problems, the per-table summary and the outcome."""
    preflight = result.preflight
    if preflight.problem_count:
        shown = preflight.problems[:max_problems]
        if console.is_terminal:
            problems = Table(
                title=f"Preflight problems ({preflight.problem_count})", title_justify="left"
            )
            for column in ("table", "id", "column", "storage class", "reason"):
                problems.add_column(column, overflow="fold")
            for p in shown:
                problems.add_row(
                    p.table, escape(str(p.id)), p.column, p.storage_class, escape(p.reason)
                )
            console.print(problems)
        else:
            # One grep-able line per problem in logs, never wrapped.
            console.print(f"preflight problems: {preflight.problem_count}", highlight=False)
            for p in shown:
                console.print(
                    f"problem: {p.table} id={p.id} column={p.column} "
                    f"storage_class={p.storage_class}: {p.reason}",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
        hidden = preflight.problem_count - len(shown)
        if hidden > 0:
            console.print(f"... and {hidden} more (see --report / --rejects)")
    summary = Table(title="Summary", title_justify="left")
    for column in ("table", "read", "loaded", "rejected", "seconds", "rows/s", "checksum"):
        summary.add_column(column, justify="left" if column == "table" else "right")
    for t in result.tables:
        summary.add_row(
            t.table,
            f"{t.rows_read:,}",
            f"{t.rows_loaded:,}",
            f"{t.rows_rejected:,}",
            f"{t.seconds:.2f}",
            f"{t.rows_per_second:,.0f}",
            _yes_no(t.checksum_match),
        )
    for phase, seconds in result.phases.items():
        summary.add_row(f"[dim]{phase}[/]", "", "", "", f"[dim]{seconds:.2f}[/]", "", "")
    console.print(summary)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    style = {
        Status.OK: "green",
        Status.REJECTED: "yellow",
        Status.MISMATCH: "bold red",
        Status.ABORTED: "bold red",
    }[result.status]
    console.print(
        f"[{style}]{result.status.value}[/] (exit {result.exit_code}): {escape(result.message)}",
        soft_wrap=True,
    )
