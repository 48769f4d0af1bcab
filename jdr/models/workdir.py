"""A training workdir as a model source: the encoder's static description is stored beside the checkpoints, so
`jdr encode / evaluate / export` (and `model.path=<workdir>`) can restore a trained encoder from the workdir alone.

Layout: `run.json` (config, seed, versions, commit), `encoder/` (spec.json + tokenizer files), `checkpoints/`
(orbax), `metrics.jsonl`, `tensorboard/`, `timing.json`, `final_metrics.json`, `export/` (HF + sentence-transformers
dir at the end; `export/query` + `export/passage` for untied towers). A workdir may be local or gs://.
"""

from __future__ import annotations

import dataclasses
import json

from jdr.io import as_path, atomic_dir
from jdr.models.bert import BertConfig
from jdr.models.encoder import EncoderSpec
from jdr.models.tokenize import copy_tokenizer_files, load_tokenizer

ENCODER_DIR = "encoder"
CHECKPOINT_DIR = "checkpoints"


def is_workdir(path) -> bool:
    """Whether `path` is a jdr training workdir (has an encoder description and a checkpoint dir)."""
    try:
        p = as_path(path)
    except ValueError:
        return False
    return (p / ENCODER_DIR / "spec.json").exists() and (p / CHECKPOINT_DIR).is_dir()


def tokenizer_files_dir(model_dir):
    """Where a model source keeps its tokenizer files: `<workdir>/encoder` for a workdir, else the dir itself."""
    return as_path(model_dir) / ENCODER_DIR if is_workdir(model_dir) else as_path(model_dir)


def spec_to_dict(spec) -> dict:
    """EncoderSpec -> JSON-able dict (the nested BertConfig included)."""
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict):
    """Inverse of `spec_to_dict`."""
    d = dict(d)
    return EncoderSpec(bert=BertConfig(**d.pop("bert")), **d)


def save_encoder_description(workdir, spec, model_dir) -> None:
    """Write `encoder/spec.json` and copy the tokenizer files of `model_dir` (a model dir or a workdir)."""
    src = tokenizer_files_dir(model_dir)
    with atomic_dir(as_path(workdir) / ENCODER_DIR) as tmp:
        (tmp / "spec.json").write_text(json.dumps(spec_to_dict(spec), indent=2, sort_keys=True))
        copy_tokenizer_files(src, tmp)


def resolve_step(ckpt, workdir, step) -> int:
    """`step` (an int, "latest"/None, or "best": the best dev score of the run's `eval.metric` saved with a
    checkpoint) of a workdir's checkpoints -> the step."""
    if step is None or step == "latest":
        found = ckpt.latest_step()
        if found is None:
            raise FileNotFoundError(f"{workdir}: no complete checkpoint in {ckpt.directory}")
        return found
    if step == "best":
        record = as_path(workdir) / "run.json"
        metric = json.loads(record.read_text())["config"]["eval"]["metric"] if record.exists() else "ndcg@10"
        return ckpt.best_step(f"dev/{metric}")
    return int(step)


def load_workdir(workdir, *, step: int | str | None = None, dtype: str | None = None):
    """Restore `(params, spec, tokenizer, step)` from a training workdir's latest, best (`step="best"`: the best
    dev score saved with a checkpoint) or given checkpoint. Read-only: it never touches a save the trainer has
    in flight."""
    import jax
    import numpy as np

    from jdr.checkpoint import Checkpointer

    workdir = as_path(workdir)
    spec = spec_from_dict(json.loads((workdir / ENCODER_DIR / "spec.json").read_text()))
    if dtype is not None:
        spec = dataclasses.replace(spec, dtype=dtype)
    tokenizer = load_tokenizer(workdir / ENCODER_DIR)
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
    try:
        step = resolve_step(ckpt, workdir, step)
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(np.asarray(x)), params)
    return params, spec, tokenizer, step
