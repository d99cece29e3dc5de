"""All configuration, read from the environment in one place.

Variable names follow the seed document and its ConfigMap (`USE_POSTGRES`,
`POSTGRES_*`); see docs/configuration.md for the full table.
"""

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL

from titanium.errors import ConfigError

ServiceName = Literal["gateway", "auth", "users", "blog"]
DataService = Literal["users", "blog"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _strict_bool(value: object) -> object:
    # A typo such as USE_POSTGRES=ture must not silently fall back to SQLite.
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return value


StrictBool = Annotated[bool, BeforeValidator(_strict_bool)]
Port = Annotated[int, Field(ge=1, le=65535)]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")
# Sent as an HTTP header value: visible ASCII only, and long enough not to be guessed.
_INTERNAL_TOKEN = re.compile(r"[!-~]{32,}")


def _is_host(host: str) -> bool:
    if ":" not in host:
        return _HOSTNAME.fullmatch(host) is not None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _exact_origin(origin: str) -> str:
    # Browsers send Origin as lower-case scheme://host[:port] without the default
    # port, and CORS compares it as a string: any other spelling would never match.
    if origin == "*":
        raise ValueError("'*' is refused: list the exact origins (scheme://host[:port])")
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        port, host = None, None
    else:
        host = parts.hostname if parts.scheme in _DEFAULT_PORTS else None
    if host is None or not _is_host(host):
        raise ValueError(f"{origin!r} is not an origin: expected scheme://host[:port]")
    written = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        written += f":{port}"
    exact = f"{parts.scheme}://{written}"
    if origin != exact:
        raise ValueError(f"{origin!r} is not an origin as browsers send it; write {exact}")
    return origin


def _origin_list(value: object) -> object:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return value  # pydantic names the wrong type
    return tuple(_exact_origin(str(item).strip()) for item in value if str(item).strip())


# Comma-separated in the environment (NoDecode: not JSON, the pydantic-settings default).
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origin_list)]


def postgres_hosts(value: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """POSTGRES_HOST as (host, port) pairs: `host`, `host:port` or `[v6]:port`, comma-separated."""
    hosts = []
    for entry in (part.strip() for part in value.split(",")):
        host, port = entry, default_port
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest:
                port = _entry_port(entry, rest)
        elif entry.count(":") == 1:
            host, _, rest = entry.partition(":")
            port = _entry_port(entry, ":" + rest)
        if not host or not _is_host(host.lower()):
            raise ValueError(f"POSTGRES_HOST entry {entry!r} is not host, host:port or [v6]:port")
        hosts.append((host, port))
    return tuple(hosts)


def _entry_port(entry: str, rest: str) -> int:
    digits = rest.removeprefix(":")
    if not rest.startswith(":") or not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError(f"POSTGRES_HOST entry {entry!r} has no valid port (1-65535)")
    return int(digits)


def _network_list(value: object) -> object:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return value  # pydantic names the wrong type
    networks = []
    for item in (str(item).strip() for item in value):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (a.b.c.d/n)") from None
    return tuple(networks)


# Comma-separated addresses or networks, normalised (10.0.0.0/8, 127.0.0.1/32, ...).
Networks = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_network_list)]


def _endpoint(value: object) -> object:
    # Empty means unset, as OpenTelemetry's own variables have it.
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


Endpoint = Annotated[str | None, BeforeValidator(_endpoint)]


class Settings(BaseSettings):
    """Typed settings of every Titanium process; each service uses the part it needs."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    use_postgres: StrictBool = False
    # One server, or several (`a:5432,b:5432,c:5432`): the services then use the
    # one that accepts writes (db/engine.py), as libpq's target_session_attrs does.
    postgres_host: str = "postgresql-service"
    postgres_port: Port = 5432
    postgres_db: str = "titanium"
    postgres_user: str | None = None
    postgres_password: SecretStr | None = None

    database_path: Path | None = None
    data_dir: Path = Path("var")

    user_service_url: str = "http://127.0.0.1:8001"
    auth_service_url: str = "http://127.0.0.1:8002"
    blog_service_url: str = "http://127.0.0.1:8005"

    jwt_private_key: SecretStr | None = None
    jwt_private_key_file: Path | None = None
    jwt_public_key: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_ttl_seconds: Annotated[int, Field(ge=60, le=86400)] = 3600
    jwt_issuer: str = "titanium"
    jwt_audience: str = "titanium"

    login_max_failures_per_user: Annotated[int, Field(ge=1)] = 5
    login_max_failures_per_client: Annotated[int, Field(ge=1)] = 20
    login_max_failures_per_user_all_clients: Annotated[int, Field(ge=1)] = 50
    login_failure_window_seconds: Annotated[int, Field(ge=1)] = 60
    registration_max_per_client: Annotated[int, Field(ge=1)] = 30
    registration_window_seconds: Annotated[int, Field(ge=1)] = 60

    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 10
    db_pool_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    db_statement_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 3.0
    db_connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 3.0
    sqlite_busy_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0

    # As many as the byte bound admits (each entry counts 512 bytes besides its
    # body): the bytes are the budget. 1,024 entries held a tenth of a
    # 10,000-post blog's posts; 6 MiB holds about a third (docs/benchmarks.md).
    blog_cache_entries: Annotated[int, Field(ge=0, le=100_000)] = 16_384
    # blog-service peaks at 111 MB RSS with the cache empty on SQLite
    # (docs/benchmarks.md), against a 120 MB budget; full at 8 MiB it reached
    # 120, so 6 MiB. The 384 Mi pod limit is the fuse, not the budget.
    blog_cache_bytes: Annotated[int, Field(ge=64 * 1024, le=1024**3)] = 6 * 1024 * 1024

    upstream_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    client_body_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    client_header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    max_header_count: Annotated[int, Field(ge=16, le=1000)] = 100
    cors_allow_origins: Origins = ()
    # Service-to-service authentication: every internal call and every request the
    # gateway relays carries it (web/clients.py). Unset, nothing is checked, as before.
    internal_token: SecretStr | None = None
    # The gateway only: peers (an Ingress controller, a load balancer) whose
    # X-Forwarded-For names the client. Empty: the socket peer is the client.
    trusted_proxies: Networks = ()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # `line`: one human-readable line per event; `json`: one JSON object per line.
    log_format: Literal["line", "json"] = "line"
    # OpenTelemetry's own variable: the OTLP/HTTP receiver's base URL (traces go to
    # /v1/traces under it). Unset or empty, no span is exported.
    otel_exporter_otlp_endpoint: Endpoint = None
    # OpenTelemetry's own name too (with OTEL_TRACES_SAMPLER=traceidratio): the share
    # of traces exported. Decided from the trace id, so every service keeps the same
    # traces whole, and no caller's sampled flag can keep its requests out.
    otel_traces_sampler_arg: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    @model_validator(mode="after")
    def _postgres_needs_credentials(self) -> "Settings":
        if self.use_postgres:
            if not self.postgres_user:
                raise ValueError("POSTGRES_USER is required when USE_POSTGRES=true")
            if self.postgres_password is None or not self.postgres_password.get_secret_value():
                raise ValueError("POSTGRES_PASSWORD is required when USE_POSTGRES=true")
        postgres_hosts(self.postgres_host, self.postgres_port)  # refuses a malformed list
        for name in (field for field in type(self).model_fields if field.endswith("_service_url")):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name.upper()} must start with http:// or https://")
        if self.internal_token is not None:
            token = self.internal_token.get_secret_value()
            if token.startswith("replace-"):
                raise ValueError("INTERNAL_TOKEN is still the example's placeholder")
            if not _INTERNAL_TOKEN.fullmatch(token):
                raise ValueError(
                    "INTERNAL_TOKEN must be at least 32 visible ASCII characters, no spaces"
                )
        return self

    @property
    def postgres_servers(self) -> tuple[tuple[str, int], ...]:
        """The PostgreSQL servers to try, in order, as (host, port)."""
        return postgres_hosts(self.postgres_host, self.postgres_port)

    @property
    def postgres_address(self) -> str:
        """host:port[,host:port...] for messages."""
        return ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in self.postgres_servers
        )

    @property
    def backend(self) -> str:
        """`postgresql` or `sqlite`: what the data-owning services will use."""
        return "postgresql" if self.use_postgres else "sqlite"

    def sqlite_path(self, service: DataService) -> Path:
        """The SQLite file of a data-owning service."""
        return self.database_path or self.data_dir / f"{service}.db"

    def database_url(self, service: DataService) -> URL:
        """SQLAlchemy URL of the service's database for the selected backend."""
        if self.use_postgres:
            assert self.postgres_password is not None  # guaranteed by the validator
            # The first server only names the dialect and the database: connections
            # are made by db/engine.py connect_postgres, which tries every server.
            host, port = self.postgres_servers[0]
            return URL.create(
                "postgresql+asyncpg",
                username=self.postgres_user,
                password=self.postgres_password.get_secret_value(),
                host=host,
                port=port,
                database=self.postgres_db,
            )
        return URL.create("sqlite+aiosqlite", database=str(self.sqlite_path(service)))


def load_settings() -> Settings:
    """Read the environment; raise ConfigError with one line naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        location = "".join(str(part) for part in error["loc"][:1]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        prefix = f"{location}: " if location else ""
        raise ConfigError(f"{prefix}{message}") from None
