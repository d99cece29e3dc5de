"""user-service's internal API, as both sides of each call import it.

auth-service checks credentials and blog-service checks that a token's account
still exists by calling user-service; these models and paths are that contract,
so no service imports another's modules.
"""

from typing import Annotated

from pydantic import BaseModel, StringConstraints

from titanium.db.tables import USERNAME_MAX
from titanium.web.schemas import NoNul

# Long passphrases are welcome (argon2 hashes all of it); the cap only stops abuse.
PASSWORD_MAX = 1024
CREDENTIALS_PATH = "/internal/credentials"
ACCOUNT_PATH = "/internal/users/{user_id}"


class Credentials(BaseModel):
    """A username and password to check: a login attempt."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=USERNAME_MAX), NoNul]
    password: Annotated[str, StringConstraints(min_length=1, max_length=PASSWORD_MAX), NoNul]


class VerifiedUser(BaseModel):
    """The account a credential check or an account lookup found."""

    id: int
    username: str


def account_path(user_id: int) -> str:
    """The path of one account's lookup."""
    return ACCOUNT_PATH.format(user_id=user_id)
