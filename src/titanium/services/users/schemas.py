"""Request and response bodies of user-service."""

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from titanium.contracts import PASSWORD_MAX
from titanium.db.tables import EMAIL_MAX, USERNAME_MAX
from titanium.security.usernames import BadUsername, username_key
from titanium.web.schemas import NoNul, UtcDatetime

PASSWORD_MIN = 8
RESERVED_USERNAMES = {"me"}


def _allowed_username(value: str) -> str:
    """The display spelling to store (NFC of what was typed), if the policy accepts it."""
    try:
        key = username_key(value)
    except BadUsername as exc:
        raise ValueError(exc.message) from None
    if key in RESERVED_USERNAMES:
        raise ValueError("this username is reserved")
    display = unicodedata.normalize("NFC", value)
    # NFC can lengthen a few characters (composition exclusions such as U+0958).
    if len(display) > USERNAME_MAX:
        raise ValueError(f"username is longer than {USERNAME_MAX} characters once normalised")
    return display


Username = Annotated[
    str,
    StringConstraints(min_length=3, max_length=USERNAME_MAX, pattern=r"^[\w.-]+$"),
    NoNul,
    AfterValidator(_allowed_username),
]
Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    NoNul,
]
Password = Annotated[
    str, StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX), NoNul
]


class Registration(BaseModel):
    """A new account."""

    model_config = ConfigDict(extra="forbid")
    username: Username
    email: Email
    password: Password


class PublicProfile(BaseModel):
    """What anyone may see of a user."""

    id: int
    username: str
    created_at: UtcDatetime | None


class OwnProfile(PublicProfile):
    """What a user sees of themselves."""

    email: str
