"""Progress of a migration: a rich progress bar on a terminal, plain log lines otherwise."""

import sys
import threading
import time
from typing import IO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ProgressSink(Protocol):
    """Where the library reports progress; called from worker threads too."""

    def start(self, task: str, total: int) -> None:
        """A phase over `total` rows begins."""

    def advance(self, task: str, rows: int) -> None:
        """`rows` more rows are done."""

    def finish(self, task: str) -> None:
        """The phase is over."""

    def log(self, message: str) -> None:
        """A one-line note for the operator."""


class NullProgress:
    """Reports nothing (library use, tests)."""

    def start(self, task: str, total: int) -> None:
        """Ignore."""

    def advance(self, task: str, rows: int) -> None:
        """Ignore."""

    def finish(self, task: str) -> None:
        """Ignore."""

    def log(self, message: str) -> None:
        """Ignore."""


class LogProgress:
    """Plain, timestamped lines for logs and pipes: one per phase start, every few seconds, end."""

    def __init__(self, stream: IO[str] | None = None, every_seconds: float = 2.0) -> None:
        self._stream = stream or sys.stderr
        self._every = every_seconds
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, int, float, float]] = {}

    def _write(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self._stream.write(f"{stamp} {message}\n")
        self._stream.flush()

    def start(self, task: str, total: int) -> None:
        """Log the start of a phase."""
        now = time.monotonic()
        with self._lock:
            self._state[task] = (0, total, now, now)
            self._write(f"{task}: started ({total} rows)")

    def advance(self, task: str, rows: int) -> None:
        """Count rows; log at most every few seconds."""
        now = time.monotonic()
        with self._lock:
            done, total, started, last = self._state.get(task, (0, 0, now, now))
            done += rows
            if now - last >= self._every:
                rate = done / max(now - started, 1e-9)
                self._write(f"{task}: {done}/{total} rows ({rate:,.0f} rows/s)")
                last = now
            self._state[task] = (done, total, started, last)

    def finish(self, task: str) -> None:
        """Log the end of a phase with its rate."""
        now = time.monotonic()
        with self._lock:
            done, _total, started, _last = self._state.pop(task, (0, 0, now, now))
            seconds = now - started
            rate = done / seconds if seconds > 0 else 0.0
            self._write(f"{task}: done, {done} rows in {seconds:.1f}s ({rate:,.0f} rows/s)")

    def log(self, message: str) -> None:
        """Log a note."""
        with self._lock:
            self._write(message)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "", style="progress.data.speed")


class RichProgress:
    """A rich progress bar per phase (rows, rows/s, ETA) for an interactive terminal."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def start(self, task: str, total: int) -> None:
        """Add a bar."""
        self._tasks[task] = self._progress.add_task(task, total=total)

    def advance(self, task: str, rows: int) -> None:
        """Move a bar."""
        if task in self._tasks:
            self._progress.advance(self._tasks[task], rows)

    def finish(self, task: str) -> None:
        """Complete a bar."""
        if task in self._tasks:
            task_id = self._tasks[task]
            done = next(t.completed for t in self._progress.tasks if t.id == task_id)
            self._progress.update(task_id, total=done)

    def log(self, message: str) -> None:
        """Print a note above the bars."""
        self._progress.console.print(message, highlight=False, markup=False)
