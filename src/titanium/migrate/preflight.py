"""Preflight: every source row is checked before anything is written.

Per table, in this order:
1. `temp_tables`: SQLite finds what needs the other rows (values repeated in a
   unique column; references are checked against ids prepared by the caller).
2. `scan`: the fast path reads the table a window of rows at a time and flags
   the rows that need a closer look; clean data costs no per-row Python.
3. `examine`: the flagged rows are judged value by value by `rules`, which say
   what a value must be to go into PostgreSQL and why one cannot.

What was found is in `problems` (the result, the rejects file); the rejected
rowids stay in a TEMP table of the source connection, which the load leaves out.
"""

import threading
from functools import partial

from titanium.migrate.errors import Interrupted
from titanium.migrate.examine import examine
from titanium.migrate.problems import PreflightResult, RejectsWriter, TablePreflight
from titanium.migrate.progress import ProgressSink
from titanium.migrate.scan import Scan
from titanium.migrate.source import BatchReader, SourceFile, SourceTable
from titanium.migrate.temp_tables import create_rejected, find_duplicates


def preflight_table(
    source: SourceFile,
    table: SourceTable,
    result: PreflightResult,
    rejects: RejectsWriter | None,
    progress: ProgressSink,
    cancelled: threading.Event | None = None,
) -> TablePreflight:
    """Check every row of one table; record problems and the rejected rowids.

    `cancelled` (set on Ctrl-C) stops the scan at the next window.
    """
    name = table.spec.name
    outcome = TablePreflight(name)
    create_rejected(source, name)
    duplicates = find_duplicates(source, table)
    scan = Scan.of(table, duplicates)
    failed: list[int] = []
    task = f"preflight {name}"
    progress.start(task, table.rows)
    reader = BatchReader(source, partial(scan.windows, source))
    try:
        for window in reader:
            if cancelled is not None and cancelled.is_set():
                raise Interrupted("interrupted during preflight; nothing was written")
            outcome.rows += window.rows
            if not scan.window_ok(window):
                failed.append(window.start)
            progress.advance(task, window.rows)
    finally:
        reader.close()
    flagged = scan.flagged(source, failed)
    progress.finish(task)
    examine(source, table, flagged, duplicates, result, rejects, outcome)
    result.tables[name] = outcome
    return outcome
