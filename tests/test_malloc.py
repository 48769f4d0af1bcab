"""jdr.malloc: mimalloc, the `jdr` command's default allocator (one re-exec), the glibc heap settings, the opt-outs."""

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


def test_the_jdr_command_reexecs_under_mimalloc_by_default_and_jdr_malloc_opts_out(monkeypatch, tmp_path):
    from jdr import malloc

    lib = tmp_path / "libmimalloc.so"
    lib.write_bytes(b"")
    calls = []
    monkeypatch.setattr(malloc.os, "execve", lambda exe, args, env: calls.append((exe, args, env)))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("JDR_MALLOC", raising=False)
    monkeypatch.setenv("JDR_MIMALLOC", str(lib))
    malloc.preload_mimalloc(["encode", "--pack"])  # the default
    exe, args, env = calls[0]
    assert exe == sys.executable and args[1:] == ["-m", "jdr.cli", "encode", "--pack"]
    assert env["LD_PRELOAD"] == str(lib)
    for mode in ("glibc", "heap", "GLIBC"):
        monkeypatch.setenv("JDR_MALLOC", mode)
        malloc.preload_mimalloc(["encode"])
    assert len(calls) == 1  # opted out
    monkeypatch.setenv("JDR_MALLOC", "mimalloc")
    monkeypatch.setenv("LD_PRELOAD", str(lib))
    malloc.preload_mimalloc(["encode"])
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
    malloc.preload_mimalloc(["encode"])
    assert len(calls) == 1  # the re-executed process does not loop; another preloaded allocator is left alone
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("JDR_MIMALLOC", str(tmp_path / "missing.so"))
    with pytest.raises(SystemExit, match="no libmimalloc.so found: `pip install cmeel-mimalloc`"):
        malloc.preload_mimalloc(["encode"])  # asked for by name: an error
    monkeypatch.delenv("JDR_MALLOC")
    malloc.preload_mimalloc(["encode"])  # the default without the library: glibc, silently
    assert len(calls) == 1
    monkeypatch.setenv("JDR_MALLOC", "tcmaloc")
    with pytest.raises(SystemExit, match="JDR_MALLOC='tcmaloc': must be one of mimalloc, glibc, heap"):
        malloc.preload_mimalloc(["encode"])


def test_jdr_cli_main_called_from_python_never_reexecs(monkeypatch, tmp_path):
    from jdr import malloc
    from jdr.cli import main

    lib = tmp_path / "libmimalloc.so"
    lib.write_bytes(b"")
    calls = []
    monkeypatch.setattr(malloc.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("JDR_MALLOC", raising=False)
    monkeypatch.setenv("JDR_MIMALLOC", str(lib))
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert calls == []


@pytest.mark.parametrize("mode", [None, "mimalloc"])
def test_jdr_command_runs_under_the_installed_mimalloc(mode):
    from jdr.malloc import find_mimalloc

    env = {k: v for k, v in os.environ.items() if k not in ("JDR_MALLOC", "LD_PRELOAD")}
    if find_mimalloc() is None:  # a runtime dependency (requirements-lock.txt): CI must have it
        assert not os.environ.get("CI"), "cmeel-mimalloc is not installed"
        pytest.skip("cmeel-mimalloc not installed")
    r = subprocess.run(
        [sys.executable, "-m", "jdr.cli", "--help"],
        capture_output=True,
        text=True,
        env=env | ({"JDR_MALLOC": mode} if mode else {}),
    )
    assert r.returncode == 0 and "usage: jdr" in r.stdout and "cannot be preloaded" not in r.stderr, r.stderr
