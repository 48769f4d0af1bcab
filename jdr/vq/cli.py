"""`jdr vq train` / `jdr vq evaluate`: parse, call `jdr.vq.pipeline`, print. The workdir layout is in that
module's docstring."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "run"]


def _train(args) -> int:
    from jdr.config import apply_overrides, load_config
    from jdr.vq.config import vq_config
    from jdr.vq.pipeline import train_workdir

    overrides = getattr(args, "config_overrides", None) or []
    if args.config is None:
        cfg = vq_config()
        apply_overrides(cfg, overrides)
    else:
        cfg = load_config(args.config, overrides)
    _set_threads(args.threads)
    metrics = train_workdir(cfg, args.workdir)
    if metrics.get("stopped"):
        from jdr.train.preemption import EXIT_RESTART, restart_notice

        print(json.dumps(metrics))
        print(restart_notice(metrics["step"]), file=sys.stderr)
        return EXIT_RESTART
    print(json.dumps(metrics) if args.json else _format(metrics))
    return 0


def _format(metrics: dict) -> str:
    lines = [
        f"trained in {metrics['train_seconds']:.1f}s on {metrics['train_queries']} queries"
        f" (+{metrics['pseudo_queries']} pseudo-queries)"
    ]
    for name, m in metrics.get("dev", {}).items():
        lines.append(f"  dev {name:<11} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return "\n".join(lines)


def _set_threads(n: int) -> None:
    if n:
        import faiss

        faiss.omp_set_num_threads(n)


def _evaluate(args) -> int:
    from jdr.vq.pipeline import evaluate_workdir

    _set_threads(args.threads)
    out, cfg = evaluate_workdir(args.workdir, data=args.data, split=args.split, nprobe=args.nprobe, flat=args.flat)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{cfg.data.dataset} ({args.split}, {out['queries']} queries), nprobe {out['nprobe']}")
        for k in ("ndcg@10", "mrr@10", "recall@100", "dense_r@10", "dense_r@100"):
            print(f"  {k:<12} {out[k]:.4f}" + (f"   (flat {out['flat'][k]:.4f})" if args.flat else ""))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `train` and `evaluate` sub-subcommands of `jdr vq` to `parser`."""
    sub = parser.add_subparsers(dest="vq_command", required=True)
    t = sub.add_parser("train", help="distil a faiss IVF-PQ / PQ index from the dense teacher")
    t.add_argument("--config", default=None, help="config file (configs/scifact_vq*.py); overrides: --config.vq.M=16")
    t.add_argument("--workdir", required=True, help="output dir: index.faiss, run.json, history.json, metrics.json")
    e = sub.add_parser("evaluate", help="NDCG@10 / MRR@10 / R@100 and dense recall of a trained index")
    e.add_argument("--workdir", required=True, help="a `jdr vq train` workdir")
    e.add_argument("--data", default=None, help="BEIR dataset name or dir (default: the training config's)")
    e.add_argument("--split", default="test")
    e.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: config vq.nprobe, else all)")
    e.add_argument("--flat", action="store_true", help="also report the exact Flat teacher")
    for p in (t, e):
        p.add_argument("--json", action="store_true", help="print one JSON object")
        # Default 0: faiss's own default, every core (k-means and PQ training dominate `jdr vq`). Pass 1 where
        # other jobs share the cores (OpenMP threads that compete spin and slow everything down).
        p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (default 0: all cores)")


def run(args: argparse.Namespace) -> int:
    """Run `jdr vq train` or `jdr vq evaluate`; returns the exit code. Bad input raises one-line ValueErrors."""
    if args.vq_command == "evaluate" and getattr(args, "config_overrides", None):
        raise ValueError("--config.* overrides only apply to `jdr vq train`")
    return _train(args) if args.vq_command == "train" else _evaluate(args)
