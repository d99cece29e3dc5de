"""What preflight found: each problem, the outcome per table, and the rejects file."""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from titanium.migrate.source import SourceTable
from titanium.migrate.values import JsonValue, SourceRow, json_value

# Problems kept in memory for the summary and the JSON report; all of them go
# to the rejects file and into the counts.
KEEP_PROBLEMS = 1000


@dataclass(frozen=True)
class Problem:
    """Why one value of one source row cannot be loaded."""

    table: str
    rowid: int
    id: JsonValue
    column: str
    storage_class: str
    code: str
    reason: str

    def as_json(self) -> dict[str, JsonValue]:
        """The problem as a JSON object."""
        return {
            "table": self.table,
            "rowid": self.rowid,
            "id": self.id,
            "column": self.column,
            "storage_class": self.storage_class,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass
class TablePreflight:
    """Preflight outcome of one table."""

    table: str
    rows: int = 0
    rejected: int = 0


@dataclass
class PreflightResult:
    """Outcome of the preflight over every table."""

    tables: dict[str, TablePreflight] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        """Rows with at least one problem."""
        return sum(table.rejected for table in self.tables.values())

    def add(self, problem: Problem) -> None:
        """Record a problem (the first KEEP_PROBLEMS are kept in full)."""
        self.problem_count += 1
        self.counts[(problem.table, problem.column, problem.code)] += 1
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(problem)


class RejectsWriter:
    """Writes rejected rows as JSON lines, one object per row (docs/migration.md)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("w", encoding="utf-8")

    def write(self, table: SourceTable, row: SourceRow, problems: list[Problem]) -> None:
        """Append one rejected row, every source column with its original value."""
        record: dict[str, Any] = {
            "table": table.spec.name,
            "source_table": table.name,
            "rowid": row.rowid,
            "id": problems[0].id,
            "problems": [
                {
                    "column": p.column,
                    "storage_class": p.storage_class,
                    "code": p.code,
                    "reason": p.reason,
                }
                for p in problems
            ],
            "row": {name: json_value(value) for name, value in row.values.items()},
            "storage_classes": {name: value.storage_class for name, value in row.values.items()},
        }
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Flush and close the file."""
        self._handle.close()
