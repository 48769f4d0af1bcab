"""The source passes ruff as pyproject.toml configures it ([tool.ruff]: line length 120, lint rules F, I, UP, E, W;
jdr/config.py excluded from the formatter): `ruff check` and `ruff format --check` over every Python tree of the
repository. ruff is pinned in requirements-lock.txt, so CI runs the same version as a local checkout."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
TREES = ["jdr", "tests", "benchmarks", "configs"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *TREES], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check_finds_no_lint_errors():
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"


def test_ruff_format_would_change_no_file():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, f"ruff format --check failed (run `ruff format`):\n{result.stdout}{result.stderr}"
