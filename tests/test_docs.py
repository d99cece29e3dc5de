"""The docs stay true: commands and settings the code has are documented."""

from pathlib import Path

import typer.main

from titanium.cli import app
from titanium.config import Settings

ROOT = Path(__file__).parent.parent


def _commands(group: object, prefix: str = "") -> list[str]:
    names = []
    for name, command in getattr(group, "commands", {}).items():
        names.append(f"{prefix}{name}")
        names += _commands(command, f"{prefix}{name} ")
    return names


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in text]
    assert missing == []


def test_every_command_is_documented() -> None:
    docs = "\n".join(path.read_text() for path in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    commands = _commands(typer.main.get_command(app))
    assert "serve" in commands
    missing = [name for name in commands if f"titanium {name}" not in docs]
    assert missing == []


def test_readme_opens_with_the_two_commands_and_ci_runs_the_same() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make run") < readme.index("make test") < 600
    assert "make test" in (ROOT / ".ci" / "run").read_text()
