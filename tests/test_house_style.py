"""The house style is checked with the tests: ruff's lint rules and format, and mypy, as pyproject.toml configures
them (the dev extra pins both tools, so an unchanged tree stays green)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_the_tree_passes_the_configured_checks(command):
    done = _run(*command)
    assert "No module named" not in done.stderr, f"{command[0]} is not installed: pip install -e '.[dev]'"
    assert done.returncode == 0, f"{' '.join(command)} found problems:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
