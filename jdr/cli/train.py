"""`jdr train`: train a dense retriever from a config (resuming from the workdir)."""

from __future__ import annotations

import json
import sys


def add_arguments(p):
    p.add_argument("--config", default=None, help="config file (configs/*.py); overrides: --config.train.lr=2e-5")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, export (resumes if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from jdr.config import load_config
    from jdr.distributed import initialize
    from jdr.train.preemption import EXIT_RESTART, restart_notice
    from jdr.train.trainer import train

    cfg = load_config(args.config, args.config_overrides)
    initialize()
    final = train(cfg, args.workdir, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=1))
    if final.get("preempted"):
        print(restart_notice(final["step"]), file=sys.stderr)
        return EXIT_RESTART
    return 0
