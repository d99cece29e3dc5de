"""Configuration is read once, and a bad setting stops a service with one clear line."""

import os
import subprocess
import sys

import pytest

from support.env import CLEAN
from titanium.config import Settings, load_settings
from titanium.errors import ConfigError
from titanium.services.registry import SERVICES, service_url


def serve(service: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titanium", "serve", service, "--port", "1"],
        env={**CLEAN, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"USE_POSTGRES": "true", "POSTGRES_USER": "titanium"}, "POSTGRES_PASSWORD"),
        ({"USE_POSTGRES": "true", "POSTGRES_PASSWORD": "pw"}, "POSTGRES_USER"),
        ({"USE_POSTGRES": "ture"}, "USE_POSTGRES"),
        ({"POSTGRES_PORT": "five"}, "POSTGRES_PORT"),
        ({"USER_SERVICE_URL": "user-service:8001"}, "USER_SERVICE_URL"),
    ],
)
def test_bad_setting_stops_the_service_with_one_line(env: dict[str, str], variable: str) -> None:
    result = serve("users", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("titanium: configuration error: ")
    assert variable in lines[0]


def test_a_service_without_the_internal_token_does_not_start() -> None:
    result = serve("gateway")  # needs no other setting
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "titanium: configuration error: INTERNAL_TOKEN is required "
        "(32+ characters, same in all four)"
    ]


def test_missing_signing_key_names_the_variable() -> None:
    result = serve("auth")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "titanium: configuration error: JWT_PRIVATE_KEY (or JWT_PRIVATE_KEY_FILE) is required"
    )


def test_settings_select_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("POSTGRES_", "USE_", "DATABASE_")):
            monkeypatch.delenv(key)
    assert (
        load_settings().database_url("blog").render_as_string() == "sqlite+aiosqlite:///var/blog.db"
    )
    monkeypatch.setenv("USE_POSTGRES", "TRUE")
    monkeypatch.setenv("POSTGRES_USER", "titanium")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss/word")
    url = load_settings().database_url("blog")
    assert url.render_as_string(hide_password=False) == (
        "postgresql+asyncpg://titanium:p%40ss%2Fword@postgresql-service:5432/titanium"
    )
    monkeypatch.setenv("POSTGRES_PASSWORD", "")
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD"):
        load_settings()


def test_database_path_overrides_the_default() -> None:
    settings = Settings(database_path="/data/app.db")
    assert str(settings.sqlite_path("users")) == "/data/app.db"
    assert str(Settings(data_dir="/srv").sqlite_path("users")) == "/srv/users.db"


def test_malloc_tuning_applies_on_glibc() -> None:
    # This machine's C library is glibc; a wrong option number or library makes it False.
    from titanium.memory import tune_malloc

    assert tune_malloc() is True


def test_every_service_url_setting_defaults_to_its_registry_port() -> None:
    settings = Settings.model_construct()  # the defaults, whatever the environment says
    callees = [service for service in SERVICES.values() if service.url_setting]
    assert {s.url_setting for s in callees} == {
        name for name in Settings.model_fields if name.endswith("_service_url")
    }
    for service in callees:
        assert service_url(settings, service.id) == f"http://127.0.0.1:{service.port}"
    assert SERVICES["gateway"].url_setting is None


def test_trusted_proxies_are_networks_and_a_typo_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", " 10.0.0.0/8, 127.0.0.1,fd00::/8 ")
    assert load_settings().trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32", "fd00::/8")
    # A host part set in a network (10.1.2.3/8) is refused: which was meant, host or net?
    for wrong in ("10.0.0.0/33", "10.1.2.3/8", "ingress-nginx"):
        monkeypatch.setenv("TRUSTED_PROXIES", wrong)
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES") as refused:
            load_settings()
        assert "\n" not in str(refused.value)


def test_postgres_host_may_list_servers_with_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_POSTGRES", "true")
    monkeypatch.setenv("POSTGRES_USER", "titanium")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pw")
    monkeypatch.setenv("POSTGRES_PORT", "6432")
    monkeypatch.setenv("POSTGRES_HOST", "db-a:5432, db-b ,[fd00::7]:5433")
    settings = load_settings()
    assert settings.postgres_servers == (("db-a", 5432), ("db-b", 6432), ("fd00::7", 5433))
    assert settings.postgres_address == "db-a:5432,db-b:6432,[fd00::7]:5433"
    assert settings.database_url("users").host == "db-a"
    for wrong, says in (("db-a,", "''"), ("db-a:0", "port"), ("db a", "'db a'")):
        monkeypatch.setenv("POSTGRES_HOST", wrong)
        with pytest.raises(ConfigError, match=f"POSTGRES_HOST entry .*{says}") as refused:
            load_settings()
        assert "\n" not in str(refused.value)
