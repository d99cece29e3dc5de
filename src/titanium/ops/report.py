"""Printing verify and doctor results: a table on a terminal (coloured on a TTY), or JSON."""

import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from titanium.ops.checks import Check, Status
from titanium.ops.journey import Step

_STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}


def print_steps(steps: Sequence[Step], as_json: bool, console: Console) -> None:
    """The journey as a table (step, status, latency) or as JSON."""
    if as_json:
        console.print_json(
            json.dumps({"ok": all(s.ok for s in steps), "steps": [s.as_dict() for s in steps]})
        )
        return
    table = Table("step", "result", "HTTP", "latency", "detail")
    for step in steps:
        result = "[green]ok[/]" if step.ok else "[bold red]FAILED[/]"
        table.add_row(
            step.name, result, str(step.status or "-"), f"{step.latency_ms:.0f} ms", step.detail
        )
    console.print(table)


def print_checks(checks: Sequence[Check], as_json: bool, console: Console) -> None:
    """The diagnosis, one line per check with its fix underneath, or JSON."""
    if as_json:
        failed = any(c.status is Status.FAIL for c in checks)
        console.print_json(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}))
        return
    for check in checks:
        style = _STYLE[check.status]
        console.print(
            f"[{style}]{check.status:<4}[/] {check.group:<14} {check.name:<18} {check.detail}",
            highlight=False,
        )
        if check.fix and check.status in (Status.FAIL, Status.WARN):
            console.print(f"{'':<5} {'':<14} [dim]fix:[/] {check.fix}", highlight=False)
