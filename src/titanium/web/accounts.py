"""Refusing the tokens of deleted accounts in services that do not own the users table.

A token stays valid until it expires; for writes, blog-service asks user-service
whether the account still exists, so a deleted user cannot keep posting.
"""

from typing import Annotated

import aiohttp
from fastapi import Depends, Request

from titanium.contracts import account_path
from titanium.errors import Unauthorized, Unavailable
from titanium.security.tokens import Identity
from titanium.web.auth import CurrentIdentity
from titanium.web.client import Downstream, forward_headers


async def ensure_active(users: Downstream, identity: Identity) -> None:
    """Raise Unauthorized unless user-service still has this account."""
    url = users.url(account_path(identity.user_id))
    try:
        async with users.session.get(url, headers=forward_headers()) as response:
            if response.status not in (200, 404):
                raise Unavailable(f"{users.name} answered {response.status}")
            # Ids are never reused, so a different name under this id means a stale token too.
            if (
                response.status == 404
                or (await response.json()).get("username") != identity.username
            ):
                raise Unauthorized("the user of this token no longer exists")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"{users.name} is unreachable") from exc


async def active_identity(request: Request, identity: CurrentIdentity) -> Identity:
    """The caller's verified identity, refused when the account is gone."""
    await ensure_active(request.app.state.users, identity)
    return identity


ActiveIdentity = Annotated[Identity, Depends(active_identity)]
