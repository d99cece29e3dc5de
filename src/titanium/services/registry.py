"""Which app factory serves which service name, and on which port by default."""

from collections.abc import Callable
from typing import Any

from titanium.config import ServiceName, Settings

PORTS: dict[ServiceName, int] = {"gateway": 8000, "users": 8001, "auth": 8002, "blog": 8005}
DISPLAY_NAMES: dict[ServiceName, str] = {
    "gateway": "api-gateway",
    "auth": "auth-service",
    "users": "user-service",
    "blog": "blog-service",
}


def app_factory(service: ServiceName) -> Callable[[Settings], Any]:
    """The `create_app` of a service (imported lazily: each process loads only its own)."""
    if service == "gateway":
        from titanium.services.gateway.app import create_app
    elif service == "auth":
        from titanium.services.auth.app import create_app
    elif service == "users":
        from titanium.services.users.app import create_app
    else:
        from titanium.services.blog.app import create_app
    return create_app
