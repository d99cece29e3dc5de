"""Field validators and types shared by the request and response models of every service."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store U+0000 in text; SQLite could, so refuse it everywhere.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _as_utc(value: datetime) -> datetime:
    # TIMESTAMP columns hold naive UTC; saying so makes the JSON end in "Z".
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NoNul = AfterValidator(_no_nul)
NotBlank = AfterValidator(_not_blank)
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
