"""The one exception hierarchy of Titanium.

Storage and security code raise these; each service maps them to HTTP in
`titanium.web.errors`, and the CLI turns them into one-line messages.
"""


class TitaniumError(Exception):
    """Root of every error Titanium raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TitaniumError):
    """A setting is missing or malformed; the process must not start."""


class InvalidInput(TitaniumError):
    """The request is well-formed but its content is not acceptable."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(TitaniumError):
    """The addressed resource does not exist."""


class Conflict(TitaniumError):
    """The write collides with existing data (a unique value is taken)."""


class Unauthorized(TitaniumError):
    """Credentials or token missing, invalid or expired."""


class Forbidden(TitaniumError):
    """Authenticated, but not allowed to touch this resource."""


class RateLimited(TitaniumError):
    """Too many attempts; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(TitaniumError):
    """A dependency (database, downstream service) cannot be reached right now."""


class NotReady(Unavailable):
    """A readiness check failed for `reason` (one of web.metrics.NOT_READY_REASONS).

    Any other Unavailable out of a readiness check is the database's.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadGateway(TitaniumError):
    """A downstream service answered with something that is not HTTP."""


class UpstreamTimeout(TitaniumError):
    """A downstream service took longer than the configured timeout."""
