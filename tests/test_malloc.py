"""jdr.malloc: the glibc settings the `jdr` command applies first, and the opt-out."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from jdr.malloc import tune_malloc; print(tune_malloc())"


def _probe(**env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("JDR_MALLOC", "LD_PRELOAD")} | env
    return subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, check=True
    ).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_applies_only_when_asked():
    assert _probe(JDR_MALLOC="heap") == "True"
    assert _probe() == "False"  # the default: glibc's own settings
    assert _probe(JDR_MALLOC="heap", LD_PRELOAD="libtcmalloc_minimal.so.4") == "False"  # another allocator preloaded


def test_python_m_jdr_cli_is_the_jdr_command():
    r = subprocess.run([sys.executable, "-m", "jdr.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: jdr" in r.stdout


def test_jdr_malloc_mimalloc_reexecs_the_command_under_ld_preload(monkeypatch, tmp_path):
    from jdr import malloc

    lib = tmp_path / "libmimalloc.so"
    lib.write_bytes(b"")
    calls = []
    monkeypatch.setattr(malloc.os, "execve", lambda exe, args, env: calls.append((exe, args, env)))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("JDR_MALLOC", raising=False)
    monkeypatch.setenv("JDR_MIMALLOC", str(lib))
    malloc.preload_mimalloc(["encode", "--pack"])
    assert calls == []  # not asked for: the default allocator stays
    monkeypatch.setenv("JDR_MALLOC", "mimalloc")
    malloc.preload_mimalloc(["encode", "--pack"])
    exe, args, env = calls[0]
    assert exe == sys.executable and args[1:] == ["-m", "jdr.cli", "encode", "--pack"]
    assert env["LD_PRELOAD"] == str(lib)
    monkeypatch.setenv("LD_PRELOAD", str(lib))
    malloc.preload_mimalloc(["encode"])
    assert len(calls) == 1  # the re-executed process does not loop
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("JDR_MIMALLOC", str(tmp_path / "missing.so"))
    with pytest.raises(SystemExit, match="no libmimalloc.so found: `pip install cmeel-mimalloc`"):
        malloc.preload_mimalloc(["encode"])


def test_jdr_command_runs_under_the_installed_mimalloc():
    from jdr.malloc import find_mimalloc

    env = {k: v for k, v in os.environ.items() if k not in ("JDR_MALLOC", "LD_PRELOAD")}
    if find_mimalloc() is None:
        pytest.skip("cmeel-mimalloc not installed")
    r = subprocess.run(
        [sys.executable, "-m", "jdr.cli", "--help"],
        capture_output=True,
        text=True,
        env=env | {"JDR_MALLOC": "mimalloc"},
    )
    assert r.returncode == 0 and "usage: jdr" in r.stdout and "cannot be preloaded" not in r.stderr, r.stderr
