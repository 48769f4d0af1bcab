"""`jdr` command line: thin subcommands (parse, call, print).

Each subcommand is a module of this package (or of the package it belongs to, like `jdr.vq.cli`) with
`add_arguments(parser)` and `run(args) -> exit code`; add one by adding a module and one `COMMANDS` entry.
Modules import their heavy dependencies inside `run`, so `jdr --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    help: str
    module: str  # imported when the parser is built; provides add_arguments(p) and run(args)


COMMANDS: dict[str, Command] = {
    "train": Command("train a dense retriever from a config (resumes from the workdir)", "jdr.cli.train"),
    "export": Command("write a training workdir's encoder as an HF + sentence-transformers dir", "jdr.cli.export"),
    "vq": Command("Distill-VQ: train / evaluate a learned IVF-PQ index", "jdr.vq.cli"),
    "encode": Command("encode a jsonl file into an embedding store", "jdr.cli.encode"),
    "index": Command("build a faiss or SPANN index over an embedding store", "jdr.cli.index"),
    "search": Command("search indexes with a model's query embeddings (or BM25), write a TREC run", "jdr.cli.search"),
    "evaluate": Command("retrieve over a BEIR split and print nDCG@10 / MRR@10 / recall", "jdr.cli.evaluate"),
    "compare": Command("per-query significance tests and CIs of runs against a baseline run", "jdr.cli.compare"),
    "fuse": Command("fuse runs: reciprocal rank fusion or normalised linear fusion", "jdr.cli.fuse"),
    "mine": Command("mine hard negatives for a BEIR split into Tevatron JSONL (`data.source=jsonl`)", "jdr.cli.mine"),
    "whiten": Command(
        "fit whitening on a corpus's embeddings and export the model with it (ST Dense + Normalize)", "jdr.cli.whiten"
    ),
    "rerank": Command("re-score the top of a TREC run with a cross-encoder, write the reranked run", "jdr.cli.rerank"),
    "score": Command(
        "add a cross-encoder's score to every passage of Tevatron JSONL groups (teacher scores)", "jdr.cli.score"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `jdr` argument parser: one subparser per COMMANDS entry."""
    parser = argparse.ArgumentParser(prog="jdr", description="Dense text retrievers in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        module = importlib.import_module(cmd.module)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def entry() -> int:
    """The `jdr` console script and `python -m jdr.cli`: re-executed once under mimalloc unless JDR_MALLOC says
    otherwise (jdr/malloc.py), then `main`."""
    from jdr.malloc import preload_mimalloc

    preload_mimalloc(sys.argv[1:])
    return main()


def main(argv=None) -> int:
    """Entry point of the `jdr` console script. Bad user input prints `jdr: error: <one line>` and returns 2."""
    from jdr.config import ConfigError, split_config_args
    from jdr.malloc import tune_malloc

    argv = sys.argv[1:] if argv is None else list(argv)
    tune_malloc()  # only with JDR_MALLOC=heap; before jax allocates anything: see jdr/malloc.py
    try:
        argv, overrides = split_config_args(argv)
    except ConfigError as e:
        print(f"jdr: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if overrides and args.command not in ("train", "vq"):
        print("jdr: error: --config.* overrides only apply to `jdr train`", file=sys.stderr)
        return 2
    args.config_overrides = overrides
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError) as e:  # DataError and ConfigError are ValueErrors
        print(f"jdr: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if not isinstance(e, _run_failures()):
            raise
        print(f"jdr: error: {_first_line(e)}", file=sys.stderr)  # the run failed; its checkpoints are intact
        return 1


def _run_failures() -> tuple[type, ...]:
    """Errors that end a run with one line: a failed refresh, checkpoint, or a non-finite loss (imported only
    when something failed: they pull in jax)."""
    from jdr.checkpoint import CheckpointError
    from jdr.train.refresh import RefreshError

    return RefreshError, CheckpointError, FloatingPointError


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
