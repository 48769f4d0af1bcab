"""Cross-encoders from and to Hugging Face / sentence-transformers directories, and from `jdr train` workdirs.

Reads HF `BertForSequenceClassification` / `RobertaForSequenceClassification` dirs with `num_labels = 1` (what
sentence-transformers' `CrossEncoder.save` writes), or a plain encoder dir (all-MiniLM-L6-v2) whose head is then
initialised fresh, as HF does. Writes the same layout, so `sentence_transformers.CrossEncoder(out_dir)` scores
the pairs as `jdr score` does: config.json declares the identity activation (`predict` returns raw logits,
not ST's default sigmoid) and tokenizer_config.json the pair budget (`model_max_length`), which ST truncates at.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file

from jdr.errors import DataError
from jdr.io import as_path, atomic_dir
from jdr.models.bert import BertConfig
from jdr.models.cross_encoder import CrossEncoderSpec, init_head
from jdr.models.hf import (
    SUPPORTED_MODEL_TYPES,
    _hf_to_tree,
    _param_names,
    _read_json,
    _read_tensors,
    _strip_prefix,
    jax_tree,
    load_tokenizer,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

KIND = "cross_encoder"  # `encoder/spec.json` "kind" of a cross-encoder workdir
_IDENTITY = "torch.nn.modules.linear.Identity"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)


def is_cross_encoder(path) -> bool:
    """Whether `path` is a cross-encoder: a `*ForSequenceClassification` model dir or a cross-encoder workdir."""
    p = as_path(path)
    if (p / "encoder" / "spec.json").exists():
        return json.loads((p / "encoder" / "spec.json").read_text()).get("kind") == KIND
    if not (p / "config.json").exists():
        return False
    archs = json.loads((p / "config.json").read_text()).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def _head_names(head: str) -> dict[tuple, tuple[str, bool]]:
    """Flat head param path -> (HF tensor name, transposed)."""
    dense = {
        "bert": {("pooler", "dense"): "bert.pooler.dense", ("classifier",): "classifier"},
        "roberta": {("classifier", "dense"): "classifier.dense", ("classifier", "out_proj"): "classifier.out_proj"},
    }[head]
    out = {}
    for path, hf in dense.items():
        out[path + ("kernel",)] = (f"{hf}.weight", True)
        out[path + ("bias",)] = (f"{hf}.bias", False)
    return out


def _num_labels(cfg: dict) -> int:
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    return len(cfg.get("id2label") or {0: "LABEL_0"})


def load_cross_encoder(model, *, dtype: str = "float32", max_length: int | None = None, seed: int = 0, step=None):
    """A cross-encoder from a model dir, hub name or `jdr train` workdir -> `(params, spec, tokenizer)`.

    `max_length` (pair tokens) defaults to the dir's tokenizer_config.json `model_max_length`, capped at the
    position table (512 when absurd or missing). A dir without classification tensors gets a fresh head
    (normal(0, 0.02), seeded by `seed`); a BERT encoder's own pooler is kept. Mismatched or unused tensors, or
    `num_labels != 1`, are one DataError line.
    """
    from jdr.models.workdir import is_workdir

    if is_workdir(model):
        return load_cross_workdir(model, step=step, dtype=dtype, max_length=max_length)[:3]
    d = resolve_model_dir(model)
    hf_cfg = _read_json(d / "config.json") if (d / "config.json").exists() else None
    if hf_cfg is None:
        raise DataError(d, "no config.json")
    model_type = hf_cfg.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DataError(d / "config.json", f"model_type {model_type!r} not supported (known: {SUPPORTED_MODEL_TYPES})")
    head = "bert" if model_type == "bert" else "roberta"
    classifier = any(str(a).endswith("ForSequenceClassification") for a in hf_cfg.get("architectures") or [])
    if classifier and _num_labels(hf_cfg) != 1:
        raise DataError(d / "config.json", f"num_labels is {_num_labels(hf_cfg)}: a reranker has one logit")
    tensors = _read_tensors(d)
    head_names = _head_names(head)
    head_tensors = {name for name, _ in head_names.values()}
    body = {k: v for k, v in tensors.items() if k not in head_tensors and not k.startswith("classifier.")}
    has_pooler = any(_strip_prefix(k).startswith("pooler.") for k in body)
    try:
        cfg = BertConfig.from_hf_dict(hf_cfg, add_pooler=has_pooler)
    except (ValueError, TypeError) as e:
        raise DataError(d / "config.json", str(e)) from None
    tree = _hf_to_tree(body, cfg, d / "model.safetensors")
    spec = CrossEncoderSpec(
        bert=dataclasses.replace(cfg, add_pooler=False),
        model_type=model_type,
        head=head,
        dtype=dtype,
        max_length=max_length or _max_length(d, cfg),
    )
    pooler = tree.pop("pooler", None)
    present = [name for name, _ in head_names.values() if name in tensors]
    if present and len(present) != len(head_names):
        raise DataError(
            d / "model.safetensors",
            f"incomplete classification head: has {present}, needs {[n for n, _ in head_names.values()]}",
        )
    if present:
        flat = {}
        for key, (name, transpose) in head_names.items():
            v = np.asarray(tensors[name], np.float32)
            flat[key] = np.ascontiguousarray(v.T if transpose else v)
        if flat[next(k for k in flat if k[-1] == "bias" and k[-2] in ("classifier", "out_proj"))].shape != (1,):
            raise DataError(d / "model.safetensors", "the classifier has more than one output")
        head_params = unflatten_dict(flat)
    else:
        head_params = jax.tree.map(np.asarray, init_head(spec, jax.random.key(seed)))
        if pooler is not None and head == "bert":
            head_params["pooler"] = pooler
        log.info("%s: no classification head; initialised a fresh one (seed %d)", d, seed)
    params = jax_tree({"bert": tree, **head_params})
    return params, spec, load_tokenizer(d)


def _max_length(d, cfg: BertConfig) -> int:
    budget = 512
    if (d / "tokenizer_config.json").exists():
        value = _read_json(d / "tokenizer_config.json").get("model_max_length")
        if isinstance(value, (int, float)) and 3 <= value <= 100_000:
            budget = int(value)
    return min(budget, cfg.max_length)


def export_cross_encoder(params, spec: CrossEncoderSpec, tokenizer_dir, out_dir: str | os.PathLike):
    """Write the cross-encoder as an HF `*ForSequenceClassification` dir that sentence-transformers' `CrossEncoder`
    loads (atomic; local or gs://) -> path. `tokenizer_dir`: a model dir or workdir whose tokenizer files are
    copied, or a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    from jdr.models.workdir import tokenizer_files_dir

    out_dir = as_path(out_dir)
    flat = flatten_dict(jax.tree.map(np.asarray, params))
    prefix = "bert." if spec.head == "bert" else "roberta."
    names = {("bert",) + k: (prefix + hf, t) for k, (hf, t) in _param_names(spec.bert).items()}
    names.update(_head_names(spec.head))
    if set(flat) != set(names):
        raise ValueError(
            f"export: params do not match the spec: missing {sorted(set(names) - set(flat))}, "
            f"unexpected {sorted(set(flat) - set(names))}"
        )
    tensors = {
        hf: np.ascontiguousarray(np.asarray(flat[k], np.float32).T if t else np.asarray(flat[k], np.float32))
        for k, (hf, t) in names.items()
    }
    arch = {
        "bert": "BertForSequenceClassification",
        "roberta": "RobertaForSequenceClassification",
        "xlm-roberta": "XLMRobertaForSequenceClassification",
    }[spec.model_type]
    hf_cfg = {
        **spec.bert.to_hf_dict(spec.model_type),
        "architectures": [arch],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "sentence_transformers": {"activation_fn": _IDENTITY},
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok_cfg = {}
        if isinstance(tokenizer_dir, Tokenizer):
            tokenizer_dir.save(str(tmp / "tokenizer.json"))
            tok_cfg = {"tokenizer_class": "BertTokenizerFast" if spec.model_type == "bert" else "RobertaTokenizerFast"}
        else:
            src = as_path(tokenizer_files_dir(tokenizer_dir))
            if not (src / "tokenizer.json").exists():
                raise DataError(src, "no tokenizer.json to export")
            for name in _TOKENIZER_FILES:
                if (src / name).exists():
                    (tmp / name).write_bytes((src / name).read_bytes())
            if (src / "tokenizer_config.json").exists():
                tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
        # The pair budget: HF tokenizers (and so ST's CrossEncoder) truncate at model_max_length.
        tok_cfg["model_max_length"] = spec.max_length
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return out_dir


def spec_dict(spec: CrossEncoderSpec) -> dict:
    """`encoder/spec.json` of a cross-encoder workdir."""
    return {"kind": KIND, **dataclasses.asdict(spec)}


def save_cross_description(workdir, spec: CrossEncoderSpec, model_dir) -> None:
    """Write a cross-encoder workdir's `encoder/spec.json` and tokenizer files (as `save_encoder_description`)."""
    from jdr.models.workdir import ENCODER_DIR, tokenizer_files_dir

    src = tokenizer_files_dir(model_dir)
    with atomic_dir(as_path(workdir) / ENCODER_DIR) as tmp:
        (tmp / "spec.json").write_text(json.dumps(spec_dict(spec), indent=2, sort_keys=True))
        for name in _TOKENIZER_FILES + ("tokenizer_config.json",):
            if (src / name).exists():
                (tmp / name).write_bytes((src / name).read_bytes())


def load_cross_workdir(workdir, *, step=None, dtype: str | None = None, max_length: int | None = None):
    """`(params, spec, tokenizer, step)` of a cross-encoder workdir's checkpoint (latest, best or a step)."""
    from jdr.checkpoint import Checkpointer
    from jdr.models.workdir import CHECKPOINT_DIR, ENCODER_DIR, resolve_step

    workdir = as_path(workdir)
    d = json.loads((workdir / ENCODER_DIR / "spec.json").read_text())
    if d.pop("kind", None) != KIND:
        raise DataError(workdir, "is a dual-encoder workdir, not a cross-encoder one")
    changes = {k: v for k, v in (("dtype", dtype), ("max_length", max_length)) if v}
    spec = CrossEncoderSpec(bert=BertConfig(**d.pop("bert")), **{**d, **changes})
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
    try:
        step = resolve_step(ckpt, workdir, step)
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(np.asarray(x)), params)
    return params, spec, load_tokenizer(workdir / ENCODER_DIR), step
