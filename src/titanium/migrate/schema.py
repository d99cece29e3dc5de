"""What the migration loads: the target tables, read from Titanium's one schema.

Column kinds, lengths, nullability, unique and foreign keys all come from
`titanium.db.tables`, so preflight checks exactly what PostgreSQL will enforce.
"""

from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from titanium.config import DataService
from titanium.db import tables

# PostgreSQL INTEGER / SERIAL: ids outside 1..2**31-1 cannot be stored (or, for
# 0 and negatives, would never come out of the sequence and break id-based URLs).
ID_MIN = 1
ID_MAX = tables.INTEGER_MAX


class Kind(StrEnum):
    """How a column's values are checked and written."""

    INTEGER = "integer"
    TEXT = "text"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class ColumnSpec:
    """One target column and the rules its values must satisfy."""

    name: str
    kind: Kind
    nullable: bool
    max_length: int | None = None
    unique: bool = False
    references: str | None = None

    @property
    def type_name(self) -> str:
        """The PostgreSQL type, for messages."""
        if self.kind is Kind.TEXT:
            return f"VARCHAR({self.max_length})" if self.max_length else "TEXT"
        return "INTEGER" if self.kind is Kind.INTEGER else "TIMESTAMP"


@dataclass(frozen=True)
class TableSpec:
    """One target table, the source file it comes from, and its columns."""

    name: str
    service: DataService
    columns: tuple[ColumnSpec, ...]
    # False for tables a source may lack entirely (the seed's schema has no categories).
    required: bool = True

    @property
    def column_names(self) -> tuple[str, ...]:
        """Target column names in load order."""
        return tuple(column.name for column in self.columns)


def _kind(column: sa.Column[object]) -> Kind:
    if isinstance(column.type, sa.Integer):
        return Kind.INTEGER
    if isinstance(column.type, sa.String):
        return Kind.TEXT
    if isinstance(column.type, sa.DateTime):
        return Kind.TIMESTAMP
    raise TypeError(f"{column.table.name}.{column.name}: no migration rule for {column.type!r}")


def _spec(table: sa.Table, service: DataService, *, required: bool = True) -> TableSpec:
    unique_columns = {
        constraint.columns[0].name
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint) and len(constraint.columns) == 1
    }
    columns = []
    for column in table.columns:
        foreign = next(iter(column.foreign_keys), None)
        length = getattr(column.type, "length", None)
        columns.append(
            ColumnSpec(
                name=column.name,
                kind=_kind(column),
                nullable=bool(column.nullable) and not column.primary_key,
                max_length=length if isinstance(length, int) else None,
                unique=column.primary_key or bool(column.unique) or column.name in unique_columns,
                references=foreign.column.table.name if foreign is not None else None,
            )
        )
    if table.primary_key.columns.keys() != ["id"]:
        raise TypeError(f"{table.name}: the migration expects a single primary key named id")
    return TableSpec(table.name, service, tuple(columns), required)


# Load order: categories before posts, because posts.category_id refers to them.
TABLES: tuple[TableSpec, ...] = (
    _spec(tables.users, "users"),
    _spec(tables.categories, "blog", required=False),
    _spec(tables.posts, "blog"),
)
