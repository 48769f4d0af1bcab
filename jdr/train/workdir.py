"""A training workdir as a model source: the encoder's static description is stored beside the checkpoints, so
`jdr encode / evaluate / export` can restore a trained encoder from the workdir alone.

Layout: `run.json` (config, seed, versions, commit), `encoder/` (spec.json + tokenizer.json), `checkpoints/`
(orbax), `metrics.jsonl`, `tensorboard/`, `export/` (HF + sentence-transformers dir at the end).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from jdr.io import atomic_dir

ENCODER_DIR = "encoder"
CHECKPOINT_DIR = "checkpoints"


def is_workdir(path) -> bool:
    """Whether `path` is a jdr training workdir (has an encoder description and a checkpoint dir)."""
    p = Path(path)
    return (p / ENCODER_DIR / "spec.json").is_file() and (p / CHECKPOINT_DIR).is_dir()


def spec_to_dict(spec) -> dict:
    """EncoderSpec -> JSON-able dict (the nested BertConfig included)."""
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict):
    """Inverse of `spec_to_dict`."""
    from jdr.models.bert import BertConfig
    from jdr.models.encoder import EncoderSpec

    d = dict(d)
    return EncoderSpec(bert=BertConfig(**d.pop("bert")), **d)


def save_encoder_description(workdir, spec, model_dir) -> None:
    """Write `encoder/spec.json` and copy the tokenizer (and ST files) from `model_dir` into the workdir."""
    with atomic_dir(Path(workdir) / ENCODER_DIR) as tmp:
        (tmp / "spec.json").write_text(json.dumps(spec_to_dict(spec), indent=2, sort_keys=True))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)


def load_workdir(workdir, *, step: int | None = None, dtype: str | None = None):
    """Restore `(params, spec, tokenizer, step)` from a training workdir's latest (or given) checkpoint."""
    import jax
    import numpy as np

    from jdr.models.hf import load_tokenizer
    from jdr.train.checkpoint import Checkpointer

    workdir = Path(workdir)
    spec = spec_from_dict(json.loads((workdir / ENCODER_DIR / "spec.json").read_text()))
    if dtype is not None:
        spec = dataclasses.replace(spec, dtype=dtype)
    tokenizer = load_tokenizer(workdir / ENCODER_DIR)
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir}: no complete checkpoint in {workdir / CHECKPOINT_DIR}")
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(np.asarray(x)), params)
    return params, spec, tokenizer, step
