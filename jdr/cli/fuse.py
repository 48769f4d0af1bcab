"""`jdr fuse`: reciprocal rank fusion or normalised linear fusion of runs."""

from __future__ import annotations

from jdr.cli.compare import RUNS_HELP


def add_arguments(p):
    p.add_argument("runs", nargs="+", help=RUNS_HELP)
    p.add_argument("--method", choices=("rrf", "linear"), default="rrf")
    p.add_argument("--k", type=float, default=60.0, help="RRF constant: score = sum w / (k + rank)")
    p.add_argument("--weights", default=None, help="comma-separated, one per run (default: all 1)")
    p.add_argument("--norm", choices=("minmax", "zscore"), default="minmax", help="linear: per-query score norm")
    p.add_argument("--depth", type=int, default=None, help="fuse each run's top DEPTH docs (default: all)")
    p.add_argument("--top-k", type=int, default=1000, help="docs kept per query")
    p.add_argument("--output", required=True, help="TREC run file")
    p.add_argument("--tag", default=None, help="run tag (default: the method)")


def run(args) -> int:
    from jdr.compare import load_run
    from jdr.evaluate import write_trec_run
    from jdr.fusion import fuse

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise ValueError(f"fuse: --weights {args.weights!r} must be comma-separated numbers") from None
    run = fuse(
        [load_run(r) for r in args.runs],
        args.method,
        k=args.k,
        weights=weights,
        norm=args.norm,
        depth=args.depth,
        top_k=args.top_k,
    )
    write_trec_run(args.output, run, args.tag or args.method, digits=10)
    print(f"wrote {args.method} fusion of {len(args.runs)} runs ({len(run)} queries) to {args.output}")
    return 0
