"""The four services as real processes on free ports, with an HTTP client on the gateway."""

import asyncio
import os
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.env import settings_for
from support.ports import stack_ports
from titanium.config import ServiceName
from titanium.runner import Stack
from titanium.services.registry import DATA_SERVICES
from titanium.web.clients import INTERNAL_HEADER


class RunningStack:
    """The four services started as processes, with an HTTP client on the gateway."""

    def __init__(self, stack: Stack, backend: str, env: dict[str, str]) -> None:
        self.stack = stack
        self.backend = backend
        self.env = env
        self.settings = settings_for(env)
        self.gateway = stack.url("gateway")
        self.client = httpx.Client(base_url=self.gateway, timeout=30)

    def service(self, name: ServiceName, *, internal: bool = True) -> httpx.Client:
        """A client talking to one service directly (not through the gateway).

        By default it calls as the gateway or another service would, with the stack's
        INTERNAL_TOKEN; `internal=False` is anyone else who reaches the port.
        """
        headers = {INTERNAL_HEADER: self.stack.internal_token} if internal else {}
        return httpx.Client(base_url=self.stack.url(name), headers=headers, timeout=30)

    def private_key(self) -> Ed25519PrivateKey:
        """The key the stack signs tokens with (to forge or expire one)."""
        pem = Path(self.env["JWT_PRIVATE_KEY_FILE"]).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, Ed25519PrivateKey), type(key)
        return key


def start_stack(env: dict[str, str], log_dir: Path) -> Stack:
    """Apply migrations and start the four services on free ports."""
    # Imported here, not at the top: conftest.py imports this module, and Alembic is slow to load.
    from titanium.db.migrations import upgrade_schema

    settings = settings_for(env)
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    ports = stack_ports()
    # Every test registers from 127.0.0.1: one client to the registration limit, which
    # tests/test_throttling.py proves on a stack of its own.
    defaults = {"REGISTRATION_MAX_PER_CLIENT": "100000"}
    stack = Stack(env={**os.environ, **defaults, **env}, ports=ports, log_dir=log_dir)
    stack.start()
    return stack
