"""What the subcommands share: `--model` / `--step` arguments and loading a model from any of the places a user
names (HF / sentence-transformers dir, hub name, `minilm`, a `jdr train` workdir)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def load_model(args, query_max_length=None, passage_max_length=None):
    """`--model`: an HF/sentence-transformers dir, a hub name, `minilm` (the installed all-MiniLM-L6-v2), or a
    `jdr train` workdir (its latest checkpoint, `--step N` or `--step best`; `jdr.models.load_model`). Says on
    stderr which checkpoint and token budgets a workdir gives. `--dim k` (`dim_arg`) keeps the first k
    dimensions, re-normalised."""
    from jdr.models.encoder import with_truncation

    params, spec, tok = _load_model(args, query_max_length, passage_max_length)
    return params, with_truncation(params, spec, getattr(args, "truncate_dim", None)), tok


def _load_model(args, query_max_length, passage_max_length):
    from jdr.models.resolve import load_model as load_any

    step_arg = getattr(args, "step", None)
    model = load_any(
        args.model, step=step_arg, query_max_length=query_max_length, passage_max_length=passage_max_length
    )
    if model.step is not None:
        spec = model.spec
        print(
            f"{args.model}: checkpoint step {model.step} ({step_arg or 'latest'}), query {spec.query_max_length} / "
            f"passage {spec.passage_max_length} tokens",
            file=sys.stderr,
        )
    return model.params, model.spec, model.tokenizer


MODEL_HELP = "HF/sentence-transformers dir, hub name, 'minilm', or a `jdr train` workdir"


def parse_step(text: str) -> int | str:
    """`--step`: a step number, `latest` or `best`."""
    if text in ("latest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number, 'latest' or 'best', got {text!r}") from None


STEP_HELP = (
    "checkpoint when --model is a workdir: a step, 'latest' (default) or 'best' (best dev score saved "
    "with a checkpoint)"
)


def dim_arg(p):
    p.add_argument(
        "--dim",
        dest="truncate_dim",
        type=int,
        default=None,
        help="keep the first k embedding dimensions, re-normalised when the model normalises "
        "(Matryoshka; sentence-transformers' truncate_dim)",
    )


def model_args(p, required=True):
    p.add_argument("--model", required=required, help=MODEL_HELP)
    p.add_argument("--step", type=parse_step, default=None, help=STEP_HELP)


def ids_path(index_path) -> Path:
    """The doc-ids file kept beside an index (`jdr.index.memories.ids_path`)."""
    from jdr.index.memories import ids_path as memory_ids_path

    return memory_ids_path(index_path)
