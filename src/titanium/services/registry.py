"""The four services: the one table every other use of their names is derived from.

A service's `id` is what configuration and the command line say (`titanium serve
users`, the package `titanium.services.users`); its `name` is what operators see
(logs, metrics, Kubernetes objects, `titanium run`). No other module spells either.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from titanium.config import DataService, ServiceName, Settings


@dataclass(frozen=True)
class Service:
    """One service of Titanium."""

    id: ServiceName
    name: str
    port: int
    # The Settings field through which other services reach this one, if any do.
    url_setting: str | None
    # The tables whose schema this service owns (its Alembic history); none: no database.
    tables: tuple[str, ...] = ()


# In the order `titanium run` starts them: each after the services it calls, the
# gateway last, so when it answers, everything behind it does.
SERVICES: dict[ServiceName, Service] = {
    service.id: service
    for service in (
        Service(
            "users", "user-service", 8001, "user_service_url", tables=("throttle_attempts", "users")
        ),
        Service("auth", "auth-service", 8002, "auth_service_url"),
        Service("blog", "blog-service", 8005, "blog_service_url", tables=("categories", "posts")),
        Service("gateway", "api-gateway", 8000, url_setting=None),
    )
}
# The services that own tables, in the order their schemas are applied.
DATA_SERVICES: tuple[DataService, ...] = tuple(
    cast(DataService, service.id) for service in SERVICES.values() if service.tables
)


def service_name(service: ServiceName) -> str:
    """The public name of a service, e.g. `user-service`."""
    return SERVICES[service].name


def service_url(settings: Settings, service: ServiceName) -> str:
    """Where the other services reach `service`, from its URL setting."""
    setting = SERVICES[service].url_setting
    if setting is None:
        raise ValueError(f"{service} is not called by other services")
    return str(getattr(settings, setting))


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
