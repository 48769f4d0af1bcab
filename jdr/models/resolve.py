"""The one place a model reference becomes a model: `minilm` (the installed all-MiniLM-L6-v2), an HF /
sentence-transformers dir, a hub name, or a `jdr train` workdir (one of its checkpoints). `jdr train`
(`model.path`), every `--model` of the CLI and `jdr vq` (`data.model`) load through `load_model`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from jdr.errors import DataError
from jdr.io import as_path
from jdr.models import hf
from jdr.models.encoder import EncoderSpec, make_params
from jdr.models.workdir import is_workdir, load_workdir

MINILM = "minilm"


class LoadedModel(NamedTuple):
    """`params`, `spec`, `tokenizer`; `step`: the checkpoint step of a workdir (None for a model dir); `path`: where
    the model (and its tokenizer files) were read from."""

    params: dict
    spec: EncoderSpec
    tokenizer: Any
    step: int | None
    path: Any


def model_path(ref: str | os.PathLike):
    """`minilm` -> the installed all-MiniLM-L6-v2 dir; a workdir (local or gs://) -> its path; a local dir as is;
    else a hub name, downloaded when the network allows (FileNotFoundError in one line otherwise)."""
    if str(ref) == MINILM:
        return hf.find_minilm()
    if is_workdir(ref):
        return as_path(ref)
    return hf.resolve_model_dir(ref)


def load_model(
    ref: str | os.PathLike,
    *,
    step: int | str | None = None,
    tied: bool | None = None,
    dtype: str | None = None,
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
) -> LoadedModel:
    """Load any model reference (see `model_path`). A workdir gives its `step` checkpoint (an int, "latest" / None,
    or "best"); `tied` / `dtype` None keep a workdir's own (a model dir: tied, float32). A tied workdir loads untied
    with `tied=False` (both towers start from it); an untied one refuses `tied=True`. The token budgets, `pooling`,
    `normalize` and the prefixes override the model's own where given."""
    path = model_path(ref)
    if not is_workdir(path):
        params, spec, tokenizer = hf.load(
            path,
            tied=True if tied is None else tied,
            dtype=dtype or "float32",
            query_max_length=query_max_length,
            passage_max_length=passage_max_length,
            pooling=pooling,
            normalize=normalize,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )
        return LoadedModel(params, spec, tokenizer, None, path)
    params, spec, tokenizer, at = load_workdir(path, step=step, dtype=dtype)
    tied = spec.tied if tied is None else tied
    if tied and not spec.tied:
        raise DataError(ref, "its encoder has untied query/passage towers; load it with model.tied=False")
    if not tied and spec.tied:
        untied = make_params(params["shared"], False)
        if "dense" in params:
            untied["dense"] = params["dense"]
        params = untied
    lengths = {
        k: v for k, v in (("query_max_length", query_max_length), ("passage_max_length", passage_max_length)) if v
    }
    spec = dataclasses.replace(spec, tied=tied, **lengths)
    spec = hf.with_settings(
        spec, pooling=pooling, normalize=normalize, query_prefix=query_prefix, passage_prefix=passage_prefix
    )
    return LoadedModel(params, spec, tokenizer, at, path)


def load(ref: str | os.PathLike, **kwargs) -> tuple[dict, EncoderSpec, Any]:
    """`load_model(ref, **kwargs)` as `(params, spec, tokenizer)`."""
    return load_model(ref, **kwargs)[:3]
