"""CI runs what the README says, with the test-only deps, and a missing ../shared fails there instead of skipping."""

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, missing


def test_ci_runs_the_readme_test_command_verbatim_with_the_test_lock():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("Run the tests", 1)[1].split("```\n", 2)[1]
    command = block.strip()
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 ")]
    assert ci == [command]
    assert "-r requirements-test-lock.txt" in command and (REPO_ROOT / "requirements-test-lock.txt").exists()


def test_missing_data_skips_for_a_developer_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="SciFact not found"):
        missing("SciFact not found at /x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="SciFact not found at /x; CI=true: the data must be present"):
        missing("SciFact not found at /x")


@pytest.mark.parametrize("ci", ["", "true"])
def test_scifact_test_without_shared_data(tmp_path, ci):
    """End to end through the fixture: `JDR_SHARED` pointing at nothing skips, and with CI=true fails."""
    env = {**os.environ, "JDR_SHARED": str(tmp_path / "nothing"), "CI": ci}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/test_data.py::test_real_scifact",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if ci:
        assert r.returncode == 1 and "CI=true: the data must be present" in r.stdout, r.stdout
    else:
        assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout
