"""A real high-availability PostgreSQL: one etcd and three PostgreSQL nodes under Patroni.

`PatroniCluster` starts, in a directory of its own, etcd (v3 API) and three Patroni
nodes on free 127.0.0.1 ports: synchronous replication in strict mode (a commit is
acknowledged only once a standby has it), timeouts short enough for a failover in
seconds on loopback, `primary_start_timeout: 0` so a crashed primary fails over to the
synchronous standby instead of being restarted in place, and pg_rewind so the old
primary rejoins as a replica. It kills, switches over and waits for what the tests and
bench/failover.py need, and stops every process it started (by PID) in `stop`.

Patroni runs the postmaster as whoever runs Patroni, and PostgreSQL refuses root: as
root, Patroni runs as the `postgres` user and the directory is chowned to it.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import asyncpg
import httpx

from support.ports import free_ports
from titanium.runner import DIE_WITH_PARENT, dies_with_parent

T = TypeVar("T")

PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
SUPERUSER, REPLICATOR, APP_USER, DATABASE = "postgres", "replicator", "titanium", "titanium"

# Patroni wants loop_wait + 2 * retry_timeout <= ttl (or it stretches them itself).
# ttl bounds how long a dead leader's key outlives it; loop_wait is how often every node
# looks at the cluster, so it bounds the delay before a crash is noticed.
TIMING = {"ttl": 10, "loop_wait": 1, "retry_timeout": 4}


class ClusterError(RuntimeError):
    """The cluster did not reach the state it was asked for."""


def pg_bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    candidate = Path(found.stdout.strip())
    if found.returncode == 0 and (candidate / "postgres").exists():
        return candidate
    root = Path("/usr/lib/postgresql")
    return root / sorted(os.listdir(root), key=int)[-1] / "bin"


def poll(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """`probe()` until it returns something other than None; ClusterError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (OSError, httpx.HTTPError, asyncpg.PostgresError, ClusterError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what}: not within {timeout:.0f}s (last error: {last})")
        time.sleep(interval)


def _alive(pid: int, marker: str) -> bool:
    """True while `pid` runs a command line containing `marker` (not a recycled pid)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class Node:
    """One Patroni member: its PostgreSQL, its REST API, its files and its process."""

    name: str
    pg_port: int
    api_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from its data directory's postmaster.pid."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, str(self.data)) else None


@dataclass
class PatroniCluster:
    """etcd and three Patroni-managed PostgreSQL nodes on 127.0.0.1, in a temporary directory."""

    size: int = 3
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="titanium-ha-")))
    nodes: list[Node] = field(default_factory=list)
    passwords: dict[str, str] = field(
        default_factory=lambda: {u: uuid.uuid4().hex for u in (SUPERUSER, REPLICATOR, APP_USER)}
    )
    etcd: subprocess.Popen[bytes] | None = None
    started_in: float | None = None  # seconds from `start` to a healthy cluster
    _logs: list[IO[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 + 2 * self.size)
        self.etcd_client, self.etcd_peer = ports[0], ports[1]
        self.scope = f"titanium-{uuid.uuid4().hex[:8]}"
        self.nodes = [
            Node(f"pg{i}", ports[2 + 2 * i], ports[3 + 2 * i], self.root / f"pg{i}")
            for i in range(self.size)
        ]

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "PatroniCluster":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        """Start etcd and the nodes; return once there is a leader and two streaming replicas,
        one of them synchronous, and the application's role and database exist."""
        began = time.monotonic()
        try:
            self._start_etcd()
            poll(self._etcd_healthy, 20, "etcd healthy")
            for node in self.nodes:
                self._start_node(node)
            remaining = timeout - (time.monotonic() - began)
            leader = self.wait_for_leader(timeout=remaining)
            self._create_application_database(leader)
            self.wait_healthy(timeout=max(5.0, timeout - (time.monotonic() - began)))
        except Exception as exc:
            tails = "\n".join(f"--- {name}\n{text}" for name, text in self.logs())
            self.stop()
            raise ClusterError(f"the cluster did not start: {exc}\n{tails}") from exc
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        """Terminate every process this cluster started (only those, by pid); remove its files."""
        running = [n.process for n in self.nodes if n.process and n.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)  # Patroni stops its PostgreSQL, then exits
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for node in self.nodes:
            # A postmaster whose Patroni died without stopping it (or was SIGKILLed above).
            pid = node.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            node.process = None
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(10)
        self.etcd = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(
        self, command: list[str], log: Path, *, as_postgres: bool
    ) -> subprocess.Popen[bytes]:
        if dies_with_parent():
            # SIGTERM when this process dies, however it dies (see titanium.runner). The
            # system's interpreter: the postgres user may not reach this one's.
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
            command = [python, "-I", "-S", "-c", DIE_WITH_PARENT, str(os.getpid()), *command]
        output = log.open("ab")
        self._logs.append(output)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
        }
        as_user: dict[str, Any] = {}
        if as_postgres and os.geteuid() == 0:
            as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        return subprocess.Popen(
            command,
            env=env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )

    def _start_etcd(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        peer = f"http://127.0.0.1:{self.etcd_peer}"
        client = f"http://127.0.0.1:{self.etcd_client}"
        self.etcd = self._spawn(
            [
                ETCD, "--name", "etcd0", "--data-dir", str(self.root / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", self.scope,
            ],
            self.root / "etcd.log",
            as_postgres=False,
        )  # fmt: skip

    def _etcd_healthy(self) -> bool | None:
        if self.etcd is None or self.etcd.poll() is not None:
            raise ClusterError(f"etcd exited; see {self.root / 'etcd.log'}")
        answer = httpx.get(f"http://127.0.0.1:{self.etcd_client}/health", timeout=2)
        return True if answer.json().get("health") == "true" else None

    def _start_node(self, node: Node) -> None:
        node.root.mkdir(parents=True, exist_ok=True)
        node.root.chmod(0o700)
        node.config.write_text(json.dumps(self.node_config(node), indent=2))  # JSON is YAML
        if os.geteuid() == 0:
            for path in (node.root, node.config):
                shutil.chown(path, "postgres", "postgres")
        node.process = self._spawn(
            [PATRONI, str(node.config)], node.root / "patroni.log", as_postgres=True
        )

    def node_config(self, node: Node) -> dict[str, Any]:
        """The Patroni configuration of one node."""
        hba = [
            "local all all trust",
            f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        return {
            "scope": self.scope,
            "namespace": "/titanium/",
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_client}"], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    **TIMING,
                    "maximum_lag_on_failover": 1048576,
                    # Fail over at once when the primary's PostgreSQL crashes, instead
                    # of restarting it in place for up to 300 s (Patroni's default).
                    "primary_start_timeout": 0,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "synchronous_node_count": 1,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "remove_data_directory_on_rewind_failure": True,
                        "remove_data_directory_on_diverged_timelines": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_connections": 200,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            "shared_buffers": "32MB",
                            "password_encryption": "scram-sha-256",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "no-sync"],
            },
            "postgresql": {
                "listen": node.address,
                "connect_address": node.address,
                "data_dir": str(node.data),
                "bin_dir": str(pg_bin_dir()),
                "pgpass": str(node.root / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": self.passwords[SUPERUSER]},
                    "replication": {"username": REPLICATOR, "password": self.passwords[REPLICATOR]},
                    "rewind": {"username": SUPERUSER, "password": self.passwords[SUPERUSER]},
                },
                "parameters": {"unix_socket_directories": str(node.root)},
                "pg_hba": hba,
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    # -- state -------------------------------------------------------------------

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the members (`GET /cluster`), from the first node that answers."""
        last: Exception | None = None
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                answer = httpx.get(f"{node.api}/cluster", timeout=2)
                answer.raise_for_status()
                members: list[dict[str, Any]] = answer.json()["members"]
                return members
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                last = exc
        raise ClusterError(f"no Patroni REST API answers /cluster ({last})")

    def _with_role(self, *roles: str) -> list[Node]:
        return [self.node(m["name"]) for m in self.members() if m.get("role") in roles]

    def primary(self) -> Node:
        """The node that holds the leader key."""
        leaders = self._with_role("leader")
        if len(leaders) != 1:
            raise ClusterError(f"no single leader: {self.members()}")
        return leaders[0]

    def replicas(self) -> list[Node]:
        """The other members (synchronous standby first)."""
        return self._with_role("sync_standby") + self._with_role("replica")

    def sync_standby(self) -> Node:
        """The synchronous standby Patroni has chosen."""
        standbys = self._with_role("sync_standby")
        if not standbys:
            raise ClusterError(f"no synchronous standby: {self.members()}")
        return standbys[0]

    def dsn(self, node: Node, *, superuser: bool = False, database: str | None = None) -> str:
        user = SUPERUSER if superuser else APP_USER
        db = database or ("postgres" if superuser else DATABASE)
        return f"postgresql://{user}:{self.passwords[user]}@{node.address}/{db}"

    def run(
        self, node: Node, sql: str, *args: Any, superuser: bool = False
    ) -> list[asyncpg.Record]:
        """One query on one node (a fresh connection), its rows."""

        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn(node, superuser=superuser), timeout=5)
            try:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args, timeout=30)
                return rows
            finally:
                await conn.close(timeout=5)

        return asyncio.run(go())

    def accepts_writes(self, node: Node) -> bool:
        """True when the node's PostgreSQL answers and is not in recovery."""
        rows = self.run(node, "SELECT pg_is_in_recovery() AS r", superuser=True)
        return rows[0]["r"] is False

    def replication(self, leader: Node) -> list[dict[str, Any]]:
        """The leader's pg_stat_replication: application_name, state, sync_state."""
        rows = self.run(
            leader,
            "SELECT application_name, state, sync_state FROM pg_stat_replication",
            superuser=True,
        )
        return [dict(row) for row in rows]

    def healthy(self) -> Node | None:
        """The leader, when it takes writes and every other node streams from it, one of
        them synchronously (from PostgreSQL's own view, not only Patroni's)."""
        leader = self.primary()
        if not self.accepts_writes(leader):
            return None
        streams = self.replication(leader)
        streaming = {s["application_name"] for s in streams if s["state"] == "streaming"}
        others = {n.name for n in self.nodes if n is not leader}
        sync = {s["application_name"] for s in streams if s["sync_state"] == "sync"}
        if not (streaming >= others and sync):
            return None
        members = self.members()
        # Patroni's view agrees: every member runs and its sync standby is PostgreSQL's.
        chosen = {m["name"] for m in members if m.get("role") == "sync_standby"}
        if all(m.get("state") in ("running", "streaming") for m in members) and chosen == sync:
            return leader
        return None

    # -- waiting -----------------------------------------------------------------

    def wait_healthy(self, timeout: float = 60) -> Node:
        """Wait until `healthy`; returns the leader."""
        return poll(self.healthy, timeout, "a leader with two streaming replicas, one sync", 0.2)

    def wait_for_leader(self, not_: Node | None = None, timeout: float = 30) -> Node:
        """Wait for a leader (other than `not_`) whose PostgreSQL takes writes."""

        def probe() -> Node | None:
            leader = self.primary()
            if leader is not_:
                return None
            return leader if self.accepts_writes(leader) else None

        return poll(probe, timeout, f"a writable leader other than {not_ and not_.name}", 0.1)

    # -- events ------------------------------------------------------------------

    def kill_primary_postmaster(self) -> Node:
        """SIGKILL the leader's postmaster (Patroni itself stays); returns that node."""
        leader = self.primary()
        self._kill_postmaster(leader)
        return leader

    def kill_replica(self, *, sync: bool = True) -> Node:
        """SIGKILL a replica's postmaster: the synchronous standby by default (the case that
        can block commits in strict mode), else an asynchronous one; returns that node."""
        victim = self.sync_standby() if sync else self._with_role("replica")[0]
        self._kill_postmaster(victim)
        return victim

    def _kill_postmaster(self, node: Node) -> None:
        pid = node.postmaster_pid()
        if pid is None:
            raise ClusterError(f"{node.name}: no running postmaster")
        os.kill(pid, signal.SIGKILL)

    def switchover(self, candidate: Node | None = None, timeout: float = 30) -> tuple[Node, Node]:
        """A planned switchover (Patroni's REST API) to `candidate` (the sync standby by
        default, the only one strict synchronous mode allows); returns (old, new) leader."""
        old = self.primary()
        target = candidate or self.sync_standby()
        answer = httpx.post(
            f"{old.api}/switchover",
            json={"leader": old.name, "candidate": target.name},
            timeout=timeout,
        )
        if answer.status_code != 200:
            raise ClusterError(f"switchover refused: {answer.status_code} {answer.text}")
        new = self.wait_for_leader(not_=old, timeout=timeout)
        return old, new

    # -- the application's side --------------------------------------------------

    def _create_application_database(self, leader: Node) -> None:
        # Commits wait for a synchronous standby (strict mode), so this also waits for one.
        async def go() -> None:
            conn = await asyncpg.connect(self.dsn(leader, superuser=True), timeout=10)
            try:
                password = self.passwords[APP_USER].replace("'", "''")
                await conn.execute(
                    f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'", timeout=60
                )
                await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {APP_USER}", timeout=60)
            finally:
                await conn.close(timeout=5)

        asyncio.run(go())

    def env(self) -> dict[str, str]:
        """The services' environment: every node in POSTGRES_HOST, the writable one is used."""
        return {
            "USE_POSTGRES": "true",
            "POSTGRES_HOST": ",".join(n.address for n in self.nodes),
            "POSTGRES_DB": DATABASE,
            "POSTGRES_USER": APP_USER,
            "POSTGRES_PASSWORD": self.passwords[APP_USER],
        }

    def logs(self) -> Iterator[tuple[str, str]]:
        """(name, last lines) of each process's log, for a failure message."""
        paths = {"etcd": self.root / "etcd.log"} | {
            n.name: n.root / "patroni.log" for n in self.nodes
        }
        for name, path in paths.items():
            with contextlib.suppress(OSError):
                yield name, "\n".join(path.read_text(errors="replace").splitlines()[-30:])
