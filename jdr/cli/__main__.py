"""`python -m jdr.cli ...` is the `jdr` command (used where the console script may not be on PATH)."""

import sys

from jdr.cli import entry

sys.exit(entry())
