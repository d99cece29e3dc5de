"""Routes that name themselves in the ASGI scope, so logs and metrics can label by template."""

from typing import Any

from starlette import routing
from starlette.types import Scope


class Route(routing.Route):
    """A Starlette route that puts itself in `scope["route"]` when it matches, as FastAPI's do.

    The request log and `http_requests_total` read the route's template from there;
    without it a plain Starlette route (/health, /metrics, the gateway's own pages)
    would be counted as `unmatched`.
    """

    def matches(self, scope: Scope) -> tuple[routing.Match, Scope]:
        """Starlette's match, with this route added to the child scope."""
        match, child_scope = super().matches(scope)
        if match is not routing.Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def add_route(app: Any, path: str, endpoint: Any, methods: list[str]) -> None:
    """Add a self-naming route to a Starlette or FastAPI `app`."""
    app.router.routes.append(Route(path, endpoint, methods=methods))
