"""`titanium verify` and `titanium doctor` against real services, databases and recorded kubectl."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.env import CLEAN, settings_for
from support.postgres import ADMIN_URL, PrivateServer, SharedServer
from support.stack import RunningStack
from support.wait import wait_until
from titanium.db.migrations import upgrade_schema
from titanium.db.revisions import head_revision
from titanium.ops.checks import Status
from titanium.ops.kubectl import check_pods, check_volume_claims
from titanium.services.registry import DATA_SERVICES

FIXTURES = Path(__file__).parent / "fixtures" / "kubectl"


def titanium(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titanium", *args],
        env={**CLEAN, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify(live: RunningStack) -> tuple[int, list[dict[str, Any]]]:
    result = titanium("verify", live.gateway, "--json", "--timeout", "5")
    return result.returncode, json.loads(result.stdout)["steps"]


def test_verify_passes_and_cleans_up(live: RunningStack) -> None:
    code, steps = verify(live)
    assert code == 0, steps
    assert [s["name"] for s in steps] == [
        "health", "ready", "register", "login", "create post", "read post", "list posts",
        "update post", "delete post", "confirm 404", "clean up user",
    ]  # fmt: skip
    assert all(s["ok"] and s["latency_ms"] >= 0 for s in steps)
    username = next(s for s in steps if s["name"] == "register")["detail"].split()[-1]
    assert live.client.get(f"/api/users/{username}").status_code == 404
    assert live.client.get("/blog/api/posts", params={"author": username}).json() == []


def test_verify_prints_a_table_on_a_terminal(live: RunningStack) -> None:
    result = titanium("verify", live.gateway)
    assert result.returncode == 0
    assert "confirm 404" in result.stdout
    assert "ms" in result.stdout


def test_verify_names_the_step_when_a_service_is_stopped(live: RunningStack) -> None:
    live.stack.stop_one("blog")
    try:
        code, steps = verify(live)
    finally:
        live.stack.start_one("blog")
        blog = live.stack.url("blog")
        wait_until(
            lambda: httpx.get(f"{blog}/ready").status_code == 200,
            30,
            f"{blog} ready",
            ignoring=(httpx.HTTPError,),
        )
    assert code == 1
    failed = [s for s in steps if not s["ok"]]
    assert failed[0]["name"] == "ready"
    assert failed[0]["status"] == 503


@pytest.mark.parametrize("live", ["postgresql"], indirect=True)
def test_verify_names_the_step_when_the_database_is_unreachable(live: RunningStack) -> None:
    database = live.env["POSTGRES_DB"]

    async def allow(flag: bool) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(flag).lower()}')
            if not flag:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    database,
                )
        finally:
            await conn.close()

    asyncio.run(allow(False))
    try:
        code, steps = verify(live)
    finally:
        asyncio.run(allow(True))
    assert code == 1
    failed = [s for s in steps if not s["ok"]]
    assert failed[0]["name"] == "register"
    assert failed[0]["status"] == 503
    # And it recovers without restarting anything.
    assert verify(live)[0] == 0


def doctor(env: dict[str, str], *extra: str) -> tuple[int, list[dict[str, str]]]:
    result = titanium("doctor", "--json", *extra, env=env)
    return result.returncode, json.loads(result.stdout)["checks"]


def failing(checks: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in checks if c["status"] == "FAIL"}


@pytest.fixture
def pg_env(postgres: SharedServer) -> Callable[[bool], dict[str, str]]:
    def make(migrated: bool) -> dict[str, str]:
        env = postgres.env(postgres.create_database())
        if migrated:
            for service in DATA_SERVICES:
                asyncio.run(upgrade_schema(settings_for(env), service))
        return env

    return make


def test_doctor_passes_a_correct_postgresql_setup(
    pg_env: Callable[[bool], dict[str, str]], keys: dict[str, str]
) -> None:
    code, checks = doctor({**pg_env(True), **keys}, "--no-cluster")
    assert code == 0, checks
    names = {c["name"] for c in checks if c["status"] == "PASS"}
    assert {"dns", "tcp", "authentication", "database", "schema users", "schema blog", "tables",
            "write probe", "token keys"} <= names  # fmt: skip


def test_doctor_names_an_unresolvable_host(pg_env: Callable[[bool], dict[str, str]]) -> None:
    env = {**pg_env(True), "POSTGRES_HOST": "postgresql-service.titanium-prod.invalid"}
    code, checks = doctor(env, "--no-cluster")
    assert code == 1
    dns = failing(checks)["dns"]
    assert (
        "cannot resolve POSTGRES_HOST='postgresql-service.titanium-prod.invalid'" in dns["detail"]
    )
    assert "kubectl get svc" in dns["fix"]


def test_doctor_names_a_wrong_password(private_postgres: PrivateServer) -> None:
    code, checks = doctor(private_postgres.env(password="not-the-password"), "--no-cluster")
    assert code == 1
    auth = failing(checks)["authentication"]
    assert "cannot log in" in auth["detail"]
    assert "POSTGRES_PASSWORD" in auth["fix"]


def test_doctor_names_a_missing_database(postgres: SharedServer) -> None:
    code, checks = doctor(postgres.env("titanium_no_such_database"), "--no-cluster")
    assert code == 1
    missing = failing(checks)["database"]
    assert missing["detail"] == "database 'titanium_no_such_database' does not exist"
    assert "CREATE DATABASE" in missing["fix"]


def test_doctor_names_a_schema_behind_head(pg_env: Callable[[bool], dict[str, str]]) -> None:
    code, checks = doctor(pg_env(False), "--no-cluster")
    assert code == 1
    problems = failing(checks)
    assert (
        problems["schema users"]["detail"] == f"at nothing, code expects {head_revision('users')}"
    )
    assert "titanium db upgrade" in problems["schema blog"]["fix"]
    assert "missing: users, posts, categories" in problems["tables"]["detail"]


def test_doctor_checks_sqlite_files(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path)}
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings_for(env), service))
    code, checks = doctor(env, "--no-cluster")
    assert code == 0, checks
    passed = [(c["group"], c["name"]) for c in checks if c["status"] == "PASS"]
    for group in ("sqlite users", "sqlite blog"):
        assert {(group, "writable"), (group, "wal"), (group, "integrity")} <= set(passed)


def test_doctor_names_an_unwritable_sqlite_path() -> None:
    code, checks = doctor({"DATABASE_PATH": "/proc/titanium/users.db"}, "--no-cluster")
    assert code == 1
    file_check = failing(checks)["file"]
    assert file_check["detail"] == "cannot create /proc/titanium"
    assert "writable volume" in file_check["fix"]


def test_doctor_names_a_bad_setting() -> None:
    code, checks = doctor({"USE_POSTGRES": "true", "POSTGRES_USER": "x"}, "--no-cluster")
    assert code == 1
    assert "POSTGRES_PASSWORD" in failing(checks)["settings"]["detail"]


def with_fake_kubectl(tmp_path: Path, scenario: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(FIXTURES / "fake_kubectl.py")
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings_for({"DATA_DIR": str(tmp_path)}), service))
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KUBECTL_FIXTURES": str(FIXTURES / scenario),
        "DATA_DIR": str(tmp_path),
    }


def cluster(checks: list[dict[str, str]]) -> list[dict[str, str]]:
    return [c for c in checks if c["group"] == "cluster"]


def test_doctor_on_a_green_cluster(tmp_path: Path, keys: dict[str, str]) -> None:
    code, checks = doctor({**with_fake_kubectl(tmp_path, "green"), **keys})
    assert code == 0, checks
    found = {c["name"]: c["detail"] for c in cluster(checks)}
    assert found["context"] == "current context: solid-cloud-admin@solid-cloud"
    assert found["nodes"] == "3/3 nodes Ready"
    assert found["postgresql-0"] == "Running and ready"
    assert found["pvc data-postgresql-0"] == "Bound"


def test_doctor_refuses_the_wrong_context(tmp_path: Path) -> None:
    code, checks = doctor(with_fake_kubectl(tmp_path, "green"), "--context", "minikube")
    assert code == 1
    assert failing(checks)["context"]["fix"] == "kubectl config use-context minikube"


def test_doctor_explains_a_pending_volume_claim(tmp_path: Path) -> None:
    code, checks = doctor(with_fake_kubectl(tmp_path, "pending-pvc"))
    assert code == 1
    pvc = failing(cluster(checks))["pvc data-postgresql-0"]
    assert pvc["detail"] == "Pending: StorageClass 'local-path' does not exist"
    assert "Local Path Provisioner" in pvc["fix"]
    assert failing(cluster(checks))["postgresql-0"]["detail"] == "Pending, not ready"


def test_doctor_explains_image_pull_and_crash_loops(tmp_path: Path) -> None:
    code, checks = doctor(with_fake_kubectl(tmp_path, "image-pull"))
    assert code == 1
    problems = failing(cluster(checks))
    pull = problems["pod api-gateway-7d9f-abcde"]
    assert pull["detail"] == "container app: ImagePullBackOff"
    assert "push" in pull["fix"]
    crash = problems["pod blog-service-4a6c-pqrst"]
    assert "CrashLoopBackOff" in crash["detail"]
    assert "POSTGRES_PASSWORD is required" in crash["detail"]
    nodes = next(c for c in cluster(checks) if c["name"] == "nodes")
    assert (nodes["status"], nodes["detail"]) == ("WARN", "2/3 nodes Ready")


def test_doctor_skips_the_cluster_without_a_context(tmp_path: Path) -> None:
    env = with_fake_kubectl(tmp_path, "green")
    env["KUBECTL_FIXTURES"] = str(tmp_path / "nothing-recorded")
    code, checks = doctor(env)
    assert code == 0
    assert cluster(checks) == [
        {"group": "cluster", "name": "kubectl", "status": "SKIP",
         "detail": "no current context: cluster checks skipped", "fix": ""}
    ]  # fmt: skip


def test_check_functions_read_the_recorded_json() -> None:
    pending = json.loads((FIXTURES / "pending-pvc" / "pvc.json").read_text())
    no_classes = json.loads((FIXTURES / "pending-pvc" / "storageclass.json").read_text())
    unset = {"items": [{**pending["items"][0], "spec": {}}]}
    [check] = check_volume_claims(unset, no_classes)
    assert check.status is Status.FAIL
    assert check.detail == "Pending: no storageClassName and no default StorageClass"
    pods = json.loads((FIXTURES / "green" / "pods.json").read_text())
    assert [c.status for c in check_pods(pods, "titanium-prod")] == [Status.PASS]
