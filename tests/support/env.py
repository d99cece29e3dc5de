"""Environments for child processes, and the settings an environment stands for."""

import os
from collections.abc import Mapping
from typing import Any

from titanium.config import Settings

# The variables that choose a database or token keys: a developer's shell may have
# them set, and a test that starts `titanium` must not inherit them.
SELECTING = ("POSTGRES_", "JWT_", "USE_")

# This process's environment without them.
CLEAN: dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith(SELECTING)}


def settings_for(env: Mapping[str, str]) -> Settings:
    """Settings as a process with this environment would read them."""
    fields: dict[str, Any] = {key.lower(): value for key, value in env.items()}
    return Settings(**fields)
