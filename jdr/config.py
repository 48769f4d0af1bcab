"""Configs: ml_collections ConfigDicts from Python files, with `--config.a.b=value` overrides.

A config file defines `get_config()` returning a *locked* ConfigDict built from `train_config()` (or
`jdr.vq.config.vq_config()`), so a typo'd key — in the file or on the command line — is an error naming the key
before anything is compiled. Every field of the defaults below carries a comment: this module is the reference.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import ml_collections

__all__ = ["ConfigError", "train_config", "load_config", "apply_overrides", "split_config_args", "to_dict"]


class ConfigError(ValueError):
    """A bad config file, key or value. The message is one line naming the file or the key."""


def train_config() -> ml_collections.ConfigDict:
    """Defaults for `jdr train`: a dual encoder fine-tuned with InfoNCE on a BEIR dataset."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameters' dropout, the data order, negatives sampling and the dev split.

    c.model = ml_collections.ConfigDict()
    c.model.path = "minilm"  # HF/ST model dir, hub name, training workdir, or "minilm" (installed all-MiniLM-L6-v2).
    c.model.tied = True  # One tower for queries and passages (False: two towers, both initialised from `path`).
    c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params and optimizer stay float32).
    c.model.query_max_length = 64  # Query tokens, [CLS]/[SEP] included.
    c.model.passage_max_length = 256  # Passage tokens; 256 is all-MiniLM-L6-v2's sentence-transformers length.

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "scifact"  # BEIR dir or name ($JDR_DATA/<name>, ../shared/data/<name>, then download).
    c.data.train_split = "train"  # qrels split the model trains on.
    c.data.test_split = "test"  # qrels split reported once, at the end (never used for choices).
    c.data.dev_queries = 100  # Train queries held out (seeded) as the dev split for periodic evaluation; 0 = none.

    c.negatives = ml_collections.ConfigDict()
    c.negatives.source = "random"  # "none" (in-batch only) | "random" | "gold" | "bm25" | "ann" | "hybrid".
    c.negatives.num = 1  # Hard negatives per query (group size = 1 + num).
    c.negatives.depth = 200  # Negatives are sampled from each source's top-`depth` (ANCE: 200).
    c.negatives.hybrid = "bm25:1,ann:3"  # Per-source counts when source == "hybrid" (sum must equal `num`).
    c.negatives.skip_top = 0  # Denoise: drop the top-r candidates of each ranked source (0 = keep all).
    # Denoise: drop candidates the dense teacher scores >= (weakest positive's score - this); None = off.
    c.negatives.denoise_threshold = ml_collections.config_dict.placeholder(float)
    c.negatives.refresh_every = 0  # ANCE: re-encode corpus, rebuild index, mine ANN negatives every N steps (0 = never).
    c.negatives.refresh_mode = "async"  # "async" (background thread, ANCE) or "sync" (bit-reproducible).
    c.negatives.refresh_fraction = 1.0  # Fraction of training queries re-mined per refresh (rest keep old rows).
    c.negatives.refresh_factory = "Flat"  # faiss index_factory string for the refresh index.
    c.negatives.refresh_batch_size = 128  # Encoding batch size during a refresh.

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300  # Optimizer steps.
    c.train.global_batch_size = 32  # Queries per step over all devices and hosts.
    c.train.loss = "info_nce"  # "info_nce" (softmax over in-batch + hard negatives) | "triplet".
    c.train.temperature = 0.05  # InfoNCE temperature (scores / t); ST's MultipleNegativesRankingLoss uses 0.05.
    c.train.margin = 0.2  # Triplet margin (also the margin of the EBR hard_in_batch hinge).
    c.train.cross_device_negatives = True  # all_gather passages so each query sees the global batch.
    c.train.lr = 2e-5  # Peak learning rate.
    c.train.schedule = "linear"  # Decay after warmup: "linear" | "cosine" | "constant".
    c.train.warmup_steps = 30  # Linear warmup steps.
    c.train.weight_decay = 0.01  # AdamW decoupled weight decay (skips biases and LayerNorm).
    c.train.b1 = 0.9  # Adam beta1.
    c.train.b2 = 0.999  # Adam beta2.
    c.train.eps = 1e-6  # Adam epsilon.
    c.train.grad_clip_norm = 1.0  # Global-norm gradient clipping (0 = off).
    c.train.grad_accum_steps = 1  # Micro-steps accumulated per optimizer step (optax.MultiSteps).
    # GradCache: encode each tower in chunks of this many rows per device (no activations kept, recomputed with the
    # same dropout keys in the backward pass): the exact full-batch gradient, activations of ~2 chunks. 0 = off.
    c.train.grad_cache_chunk = 0
    # Facebook EBR online hard negatives: each query's k highest-scoring in-batch passages of other queries' groups
    # (known positives excluded) add a triplet hinge with margin `train.margin` to the loss. 0 = off (EBR: <= 2).
    c.train.hard_in_batch_k = 0
    c.train.hard_in_batch_weight = 1.0  # Weight of that hinge term, added to the info_nce / triplet loss.
    c.train.dropout = True  # Dropout on during training (the checkpoint's own rates).
    # PRNG for dropout: "threefry2x32" (same bits on every backend) or "rbg" (XLA's RngBitGenerator: ~15 % faster
    # train steps on CPU, where threefry masks cost a third of the step; reproducible on the same backend only).
    c.train.rng_impl = "threefry2x32"

    # LTRe / ADORE: train only the query tower by full retrieval over a fixed index of the frozen passage tower.
    c.ltre = ml_collections.ConfigDict()
    c.ltre.enabled = False  # Replaces sampled negatives and the contrastive loss; needs model.tied=False.
    # faiss index file (`jdr index`, or `jdr vq train`'s index.faiss; ids in INDEX.ids.txt): the loss scores the
    # index's reconstructions (JPQ). "" = index the corpus as encoded by the frozen passage tower (exact vectors).
    c.ltre.index = ""
    c.ltre.embeddings = ""  # A `jdr encode --tower passage` store of the corpus, instead of encoding it ("" = encode).
    c.ltre.factory = "Flat"  # faiss factory for the index built from embeddings (search only; scores stay exact).
    c.ltre.nprobe = 0  # IVF probes at search time (0 = faiss default).
    c.ltre.top_k = 200  # Documents retrieved per query per step; positives the search missed are appended (ADORE).
    c.ltre.max_positives = 8  # Positive slots per query in a batch (SciFact train: up to 5); more is an error.
    c.ltre.loss = "lambdarank"  # "lambdarank" (ADORE pairwise, |1/rank_i - 1/rank_j|) | "listwise" (train.temperature).
    c.ltre.metric_cut = 0  # lambdarank: 1/rank counts as 0 beyond this rank (ADORE's metric_cut; 0 = no cut).
    c.ltre.search = "callback"  # "callback": faiss search inside the step (jax.pure_callback) | "host": between steps.

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 100  # Dev evaluation every N steps (0 = only at the end).
    c.eval.factory = "Flat"  # faiss index for evaluation.
    c.eval.batch_size = 128  # Encoding batch size for evaluation.
    c.eval.corpus_sample = 0  # Dev eval over dev positives + N seeded random docs (0 = full corpus; a CPU proxy).
    c.eval.metric = "ndcg@10"  # Dev metric that picks the best checkpoint.
    c.eval.final_test = True  # Evaluate the final model on `data.test_split`.

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100  # Save every N steps (and at the end).
    c.checkpoint.keep = 2  # Keep the last N checkpoints (plus the best by `eval.metric`).
    c.checkpoint.async_save = True  # orbax async save: training continues while the files are written.

    c.log = ml_collections.ConfigDict()
    c.log.every = 10  # Log metrics (JSONL, TensorBoard, progress bar) every N steps.
    c.log.tensorboard = True  # Also write TensorBoard event files (tensorboardX).

    c.export = ml_collections.ConfigDict()
    c.export.at_end = True  # Write the trained encoder as an HF + sentence-transformers dir in workdir/export.
    c.lock()
    return c


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"jdr_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except AttributeError as e:  # a locked ConfigDict refusing a typo'd key inside the file
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    return module


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load `get_config()` from a Python file (None → `train_config()`), then apply `a.b=value` overrides."""
    if path is None:
        cfg = train_config()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        module = _load_module(path)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path}: defines no get_config()")
        try:
            cfg = module.get_config()
        except (AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {_first_line(e)}") from None
        if not isinstance(cfg, ml_collections.ConfigDict):
            raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    cfg.lock()
    apply_overrides(cfg, overrides)
    return cfg


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: --config.negatives.source=bm25


def _coerce(key: str, old, value):
    """Convert an override to the type of the default it replaces, or raise one line naming the key."""
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(old, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(old, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(old, str):
        return str(value)
    elif old is None or isinstance(old, type(value)):
        return value
    raise ConfigError(f"config key {key!r} expects {type(old).__name__}, got {value!r}")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply `section.key=value` strings in place; unknown keys and wrong types raise `ConfigError`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, siblings, n=1)
                hint = f" (did you mean {'.'.join(parts[:i] + [close[0]])!r}?)" if close else ""
                raise ConfigError(f"unknown config key {here!r}{hint}")
            if i < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        if isinstance(old, ml_collections.ConfigDict):
            raise ConfigError(f"config key {key!r} is a section; set one of its fields")
        try:
            with node.unlocked():
                node[parts[-1]] = _coerce(key, old, _parse_value(text))
        except TypeError as e:  # a typed placeholder (None default) refusing the value
            raise ConfigError(f"config key {key!r}: {_first_line(e)}") from None


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `--config.a.b=v` / `--config.a.b v` overrides out of an argv list: (other args, overrides)."""
    rest, overrides, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ConfigError(f"config override {arg!r} has no value")
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
    """Plain JSON-able dict of a config (for run records and checkpoints)."""
    return json.loads(cfg.to_json())


def sibling(config_file: str | Path, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the config file `name` beside `config_file`: how an overlay starts from its base."""
    return load_config(Path(config_file).with_name(name))
