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
from collections.abc import Sequence
from pathlib import Path

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
    # Pooling "cls" | "mean" | "max"; None = the checkpoint's own (sentence-transformers files; plain HF: "cls").
    c.model.pooling = ml_collections.config_dict.placeholder(str)
    # L2-normalise embeddings (cosine scores); None = the checkpoint's own (ST's Normalize module; plain HF: False).
    c.model.normalize = ml_collections.config_dict.placeholder(bool)
    # Text put before every query / passage in training, evaluation, mining, refresh and the export's ST `prompts`
    # (E5: "query: " / "passage: "); None = the checkpoint's own (its ST prompts "query" / "passage"), else "".
    c.model.query_prefix = ml_collections.config_dict.placeholder(str)
    c.model.passage_prefix = ml_collections.config_dict.placeholder(str)  # E.g. "passage: "; None: the checkpoint's.

    c.data = ml_collections.ConfigDict()
    # Training source: "beir" (data.dataset's qrels), "jsonl" (Tevatron JSONL), "triplets" (query/positive/negative
    # texts), "msmarco" (MS MARCO TSV files), "mixture" (several of these with weights), "selfsup" (pairs made from
    # data.dataset's corpus alone, see data.selfsup). docs/DESIGN.md: data path.
    c.data.source = "beir"
    c.data.dataset = "scifact"  # BEIR dir or name: training data of source=beir; test evaluation for every source.
    c.data.train_split = "train"  # qrels split the model trains on (source=beir).
    c.data.test_split = "test"  # qrels split of data.dataset reported once, at the end (never used for choices).
    c.data.dev_queries = 100  # Training queries held out (seeded) as the dev split for periodic evaluation; 0 = none.
    c.data.mask_false_negatives = True  # Keep passages labelled relevant to a query out of its in-batch negatives.
    c.data.pad_queries_to_max = True  # Pad queries to model.query_max_length: one train-step compile per run.
    c.data.pad_passages_to_max = False  # Pad passages to model.passage_max_length (else the batch's length bucket).
    c.data.jsonl = ml_collections.ConfigDict()
    c.data.jsonl.path = ""  # Tevatron JSONL: {"query_id","query","positive_passages":[..],"negative_passages":[..]}.
    c.data.triplets = ml_collections.ConfigDict()
    c.data.triplets.path = ""  # .jsonl ({"query"|"anchor","positive","negative"}) or .tsv (query, positive, negative).
    c.data.msmarco = ml_collections.ConfigDict()
    c.data.msmarco.collection = ""  # collection.tsv (pid, passage).
    c.data.msmarco.queries = ""  # queries.train.tsv (qid, query).
    c.data.msmarco.qrels = ""  # qrels.train.tsv (TREC: qid 0 pid relevance).
    c.data.msmarco.triples = ""  # Optional qidpidtriples.train.tsv (qid, positive pid, negative pid): `file` negatives.
    c.data.mixture = ml_collections.ConfigDict()
    # Members as "kind:path_or_name:weight;..." with kind beir | jsonl | triplets (e.g.
    # "jsonl:a.jsonl:2;beir:scifact:1"); each member shares this config's model, negatives and batch settings.
    c.data.mixture.members = ""
    # Each global batch from one member, drawn by weight (FlagEmbedding's same_dataset_within_batch: in-batch
    # negatives from another dataset are too easy); False: every batch splits its rows over members by weight.
    c.data.mixture.same_source_batches = True
    # source=selfsup: positive pairs from data.dataset's raw corpus, no queries or qrels (docs/DESIGN.md: selfsup).
    c.data.selfsup = ml_collections.ConfigDict()
    c.data.selfsup.pairs = "crop"  # "crop" (Contriever) | "ict" | "dropout" (SimCSE) | "title" | "bm25".
    c.data.selfsup.chunk_length = 256  # crop: chunk size in tokens; the grid moves every epoch.
    c.data.selfsup.ratio_min = 0.05  # crop: shortest crop as a fraction of its chunk.
    c.data.selfsup.ratio_max = 0.5  # crop: longest crop as a fraction of its chunk.
    c.data.selfsup.remove_prob = 0.9  # ict: how often the query sentence is cut out of its key (ORQA: 0.9).
    c.data.selfsup.query_unit = "sentence"  # bm25: pseudo-query is a "sentence", the "title" or "both".
    c.data.selfsup.min_query_tokens = 5  # ict / bm25: shortest sentence usable as a query.
    # ict / bm25: how documents split into sentences. "regex": a stop, a space and a capital (English prose) |
    # "lowercase": any character may follow the stop (lower-cased or caseless text; 。！？ too) | "window:N": N-word
    # windows, no sentence detection. jdr/data/selfsup/sentences.py.
    c.data.selfsup.sentence_split = "regex"
    c.data.selfsup.query_augment = ""  # Token augmentations of the query view, e.g. "delete:0.1" or "span:5".
    c.data.selfsup.passage_augment = ""  # ... and of the positive view (delete replace mask shuffle span repeat).

    c.negatives = ml_collections.ConfigDict()
    # "none" (in-batch only) | "random" | "gold" | "bm25" | "ann" | "file" (the training data's own) | "memory"
    # (a mixture of memories, see negatives.memories) | "hybrid".
    c.negatives.source = "random"
    c.negatives.num = 1  # Hard negatives per query (group size = 1 + num).
    c.negatives.depth = 200  # Negatives are sampled from each source's top-`depth` (ANCE: 200).
    c.negatives.hybrid = "bm25:1,ann:3"  # Per-source counts when source == "hybrid" (sum must equal `num`).
    c.negatives.warm_start = "bm25"  # Where ANN's share comes from until the first refresh: bm25 | file | random.
    # BM25 of `bm25` negatives: "lucene" = Pyserini's BEIR BM25 (k1 0.9, b 0.4, Porter stemming) | "bm25s" = jdr's
    # former one (k1 1.5, b 0.75, no stemming). jdr.index.bm25.PRESETS.
    c.negatives.bm25_preset = "lucene"
    c.negatives.skip_top = 0  # Denoise: drop the top-r candidates of each ranked source (0 = keep all).
    # Denoise: drop candidates the dense teacher scores >= (weakest positive's score - this); None = off.
    c.negatives.denoise_threshold = ml_collections.config_dict.placeholder(float)
    c.negatives.refresh_every = 0  # ANCE: re-encode corpus, rebuild index, mine ANN negatives every N steps (0 = off).
    # "sync" (the loop waits for each refresh) or "async" (a background thread, ANCE's design). Sync by default
    # because it is what a user expects of a seeded run: the same negatives at the same step, and a resumed run
    # bit-identical to an uninterrupted one. Async's swap step depends on thread timing; it pays off only where the
    # encode has hardware of its own (accelerators), never on a CPU that the step loop already fills.
    c.negatives.refresh_mode = "sync"
    # Async only: at a preemption, seconds to wait for a refresh in flight, then swapped in and checkpointed;
    # if it is not done, the resumed run redoes it at its first step. Spot VMs get ~30 s between notice and kill.
    c.negatives.refresh_grace_seconds = 10.0
    c.negatives.refresh_fraction = 1.0  # Fraction of training queries re-mined per refresh (rest keep old rows).
    c.negatives.refresh_factory = "Flat"  # faiss index_factory string for the refresh index.
    c.negatives.refresh_batch_size = 128  # Encoding batch size during a refresh.
    # RocketQA denoising at each ANCE refresh: a cross-encoder (HF dir or cross-encoder workdir) judges each query's
    # first ce_denoise_depth re-mined candidates and drops those with logit >= ce_denoise_threshold, or >= the
    # weakest positive's logit - ce_denoise_margin (set one). "" = off. `jdr mine --ce-model` does it offline.
    c.negatives.ce_denoise_model = ""
    c.negatives.ce_denoise_threshold = ml_collections.config_dict.placeholder(float)  # Drop logit >= T.
    c.negatives.ce_denoise_margin = ml_collections.config_dict.placeholder(float)  # Drop logit >= weakest pos - M.
    c.negatives.ce_denoise_depth = 30  # Candidates per query (in rank order) the cross-encoder judges.
    # Source "memory" (MoMA's hard negatives from a mixture of memories): the training corpus (memory "train",
    # embedded by the model at the start and at every refresh) plus fixed augmentation memories, as
    # "name=INDEX_OR_STORE,CORPUS;...": INDEX_OR_STORE a faiss index / SPANN dir from `jdr index` or an embedding
    # store from `jdr encode` (indexed at the start with refresh_factory), CORPUS its corpus.jsonl or BEIR dir (the
    # negatives' texts). Encoded once by a model of this model's width, never re-encoded; batches key their
    # documents "name:docid". docs/DESIGN.md: memory negatives.
    c.negatives.memories = ""
    # "merged" (the top `depth` over train + every memory) or candidate quotas per memory, "train:100,wiki:50"
    # (summing to <= depth; a memory left out gives none).
    c.negatives.memory_mix = "merged"
    c.negatives.memory_probe = 0  # Lists searched per query in an IVF (nprobe) / SPANN (max_probe) memory; 0 = its own.

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300  # Optimizer steps.
    c.train.global_batch_size = 32  # Queries per step over all devices and hosts.
    # What the step optimises, a module of jdr/train/objectives/ (its docstring lists its inputs and keys):
    # "contrastive" (train.loss below), "moco" (moco.*), "ltre" (ltre.*), "cross_encoder" (cross_encoder.*: the
    # model is a reranker), "distill" (distill.*: a bi-encoder taught by teacher scores of a scored jsonl source).
    # "" = "ltre" if ltre.enabled, "moco" if
    # moco.enabled, else "contrastive" (configs written before this key).
    c.train.objective = ""
    # Matryoshka (train.objective "matryoshka"): the loss summed over these nested embedding prefixes, e.g.
    # "384,256,128,64,32"; weights "" = 1 each, else one per dim ("1,1,1,0.5,0.5").
    c.train.matryoshka_dims = ""  # "" = off.
    c.train.matryoshka_weights = ""  # "" = 1 each.
    c.train.loss = "info_nce"  # "info_nce" (softmax over in-batch + hard negatives) | "triplet".
    # InfoNCE temperature (scores / t); ST's MultipleNegativesRankingLoss uses 0.05 on cosine scores. Dot products
    # of unnormalised embeddings need ~1.0 (DPR, Tevatron): the trainer warns below 0.5 without model.normalize.
    c.train.temperature = 0.05
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
    # PRNG of the run's keys (per-step fold_in, per-device split): "threefry2x32" (same bits on every backend) or
    # "rbg" (reproducible on the same backend only). Dropout masks are hashed from those keys (jdr/models/dropout.py),
    # so the choice no longer changes the step's cost.
    c.train.rng_impl = "threefry2x32"

    c.moco = ml_collections.ConfigDict()
    c.moco.enabled = False  # = train.objective "moco" (Contriever): keys from a momentum copy of the encoder, queued.
    c.moco.momentum = 0.999  # EMA factor of the key tower (Contriever: 0.999).
    c.moco.queue_size = 4096  # Past positive keys scored as extra negatives; a multiple of train.global_batch_size.

    # LTRe / ADORE: train only the query tower by full retrieval over a fixed index of the frozen passage tower.
    c.ltre = ml_collections.ConfigDict()
    c.ltre.enabled = False  # = train.objective "ltre": replaces sampled negatives and the contrastive loss.
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

    # train.objective=cross_encoder: a one-logit reranker over [CLS] q [SEP] p [SEP]
    # (jdr/train/objectives/cross_encoder.py).
    c.cross_encoder = ml_collections.ConfigDict()
    c.cross_encoder.loss = "localized_contrastive"  # Softmax over the query's group (Gao et al. 2021) | "bce".
    c.cross_encoder.temperature = 1.0  # localized_contrastive: logits / t.

    # train.objective=distill: the bi-encoder learns a teacher's scores of its groups (jdr/train/objectives/distill.py).
    c.distill = ml_collections.ConfigDict()
    c.distill.loss = "margin_mse"  # "margin_mse" (Hofstaetter et al.) | "kl" (listwise: KL to the teacher's softmax).
    c.distill.teacher_temperature = 1.0  # kl: teacher scores / t before the softmax.
    c.distill.info_nce_weight = 0.0  # > 0 adds weight x InfoNCE (train.temperature) over the in-batch passages.

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 100  # Dev evaluation every N optimizer steps (0 = only at the end); top 100 retrieved.
    c.eval.factory = "Flat"  # faiss index for evaluation.
    c.eval.batch_size = 128  # Encoding batch size for evaluation.
    c.eval.passage_max_length = 0  # Passage tokens in dev and test evaluation (0 = model.passage_max_length).
    c.eval.corpus_sample = 0  # Dev eval over dev positives + N seeded random docs (0 = full corpus; a CPU proxy).
    c.eval.metric = "ndcg@10"  # Dev metric that picks the best checkpoint (steps with a dev score of their own).
    c.eval.final_test = True  # Evaluate the final model on `data.test_split`.

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100  # Save every N optimizer steps (and at the end, and on a preemption notice).
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
        if old is None and node.get_ref(parts[-1]).get_type() is bool:
            old = False  # an unset bool placeholder (model.normalize) takes true/false like any bool
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
