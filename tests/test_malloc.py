"""jdr.malloc: the glibc settings the `jdr` command applies first, and the opt-out."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from jdr.malloc import tune_malloc; print(tune_malloc())"


def _probe(**env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("JDR_MALLOC", "LD_PRELOAD")} | env
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_applies_only_when_asked():
    assert _probe(JDR_MALLOC="heap") == "True"
    assert _probe() == "False"  # the default: glibc's own settings
    assert _probe(JDR_MALLOC="heap", LD_PRELOAD="libtcmalloc_minimal.so.4") == "False"  # another allocator preloaded


def test_python_m_jdr_cli_is_the_jdr_command():
    r = subprocess.run([sys.executable, "-m", "jdr.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: jdr" in r.stdout
