"""What one diagnostic check reports."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Outcome of a check; only FAIL makes `titanium doctor` exit non-zero."""

    PASS = "PASS"  # noqa: S105 - a status, not a secret
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class Check:
    """One line of the diagnosis: what was checked, the outcome, and the fix."""

    group: str
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data."""
        return {
            "group": self.group,
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
        }
