"""`jdr vq train` / `jdr vq evaluate`: Distill-VQ on a BEIR dataset with a fixed dense teacher.

A workdir holds `index.faiss` (+ `index.faiss.ids.txt`, row i = line i), `vq.safetensors` (the jdr VQIndex),
`run.json` (config, versions, train seconds), `history.json` (per-step losses), `metrics.json` (dev metrics of the
faiss init and the trained index), `query_encoder/` (the trained query tower, with `train.query_encoder`) and, when
the corpus was encoded rather than read from `data.embeddings`, `teacher_corpus/` (the teacher's document
embeddings, which `evaluate` needs for dense recall).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from jdr.data.beir import BeirData, load_beir, resolve_dataset
from jdr.errors import DataError

__all__ = ["add_arguments", "run", "Teacher", "load_teacher", "split_queries", "index_metrics"]

PSEUDO = ("none", "title", "doc")
QUERY_ENCODER_DIR = "query_encoder"  # trained query tower (HF + sentence-transformers dir), train.query_encoder


class Teacher:
    """Teacher embeddings of one dataset: `doc_emb` [N, d] with `doc_ids` (index row order), and `queries(qids)`
    -> [len(qids), d] query-tower embeddings, read from `data.embeddings` or encoded on first use."""

    def __init__(self, cfg, data_dir: Path, workdir: Path | None = None):
        self.cfg, self.data_dir = cfg, data_dir
        self._store = Path(cfg.data.embeddings) if cfg.data.embeddings else None
        self._query_texts = None
        if self._store is not None:
            from jdr.index.store import load_embeddings

            emb, self.doc_ids = load_embeddings(self._store / "corpus", mmap=False)
            self.doc_emb = np.ascontiguousarray(emb, np.float32)
        elif workdir is not None and (workdir / "teacher_corpus").is_dir():
            from jdr.index.store import load_embeddings

            emb, self.doc_ids = load_embeddings(workdir / "teacher_corpus", mmap=False)
            self.doc_emb = np.ascontiguousarray(emb, np.float32)
        else:
            from jdr.data.beir import load_corpus

            corpus = load_corpus(data_dir / "corpus.jsonl")
            self.doc_ids = corpus.ids
            self.doc_emb = self._encode(corpus.passages(), "passage", cfg.data.passage_max_length)

    @property
    def model_dir(self) -> Path:
        from jdr.models import hf

        return hf.find_minilm() if self.cfg.data.model == "minilm" else Path(self.cfg.data.model)

    @functools.cached_property
    def model(self):
        """(params, spec, tokenizer) of `data.model`, loaded on first use."""
        from jdr.models import hf

        return hf.load(self.model_dir, query_max_length=self.cfg.data.query_max_length,
                       passage_max_length=self.cfg.data.passage_max_length)

    def query_tower(self):
        """The teacher's query tower as a trainable `QueryTower` (the start of "Distill-VQ + query encoder")."""
        from jdr.vq.query_tower import QueryTower

        params, spec, tok = self.model
        return QueryTower(params, spec, tok, self.model_dir)

    def texts(self, qids: list[str]) -> list[str]:
        """The query texts of these ids (from the dataset's queries.jsonl)."""
        if self._query_texts is None:
            from jdr.data.beir import load_queries

            self._query_texts = load_queries(self.data_dir / "queries.jsonl")
        missing = [q for q in qids if q not in self._query_texts]
        if missing:
            raise DataError(self.data_dir / "queries.jsonl", f"{len(missing)} query ids missing, e.g. {missing[0]!r}")
        return [self._query_texts[q] for q in qids]

    def _encode(self, texts: list[str], tower: str, max_length: int) -> np.ndarray:
        from jdr.models.inference import encode_texts

        params, spec, tok = self.model
        emb = encode_texts(params, spec, tok, texts, tower=tower, max_length=max_length,
                           batch_size=self.cfg.data.batch_size)
        return np.ascontiguousarray(emb, np.float32)

    def queries(self, qids: list[str]) -> np.ndarray:
        """Query-tower embeddings [len(qids), d] of these query ids (DataError naming the store if one is missing)."""
        if self._store is not None:
            from jdr.index.store import load_embeddings

            emb, ids = load_embeddings(self._store / "queries", mmap=False)
            row = {q: i for i, q in enumerate(ids)}
            missing = [q for q in qids if q not in row]
            if missing:
                raise DataError(self._store / "queries" / "ids.txt", f"{len(missing)} queries missing, e.g. {missing[0]!r}")
            return np.ascontiguousarray(emb[[row[q] for q in qids]], np.float32)
        return self._encode(self.texts(qids), "query", self.cfg.data.query_max_length)

    def pseudo_queries(self) -> np.ndarray:
        """Label-free extra training queries per `data.pseudo_queries`: [0 | N, d]."""
        kind = self.cfg.data.pseudo_queries
        if kind == "doc":
            return self.doc_emb
        if kind == "title":
            if self.cfg.data.pseudo_embeddings:
                from jdr.index.store import load_embeddings

                emb, ids = load_embeddings(self.cfg.data.pseudo_embeddings, mmap=False)
                if ids != self.doc_ids:
                    raise DataError(Path(self.cfg.data.pseudo_embeddings) / "ids.txt", "ids differ from the corpus ids")
                return np.ascontiguousarray(emb, np.float32)
            from jdr.data.beir import load_corpus

            corpus = load_corpus(self.data_dir / "corpus.jsonl")
            row = {d: i for i, d in enumerate(corpus.ids)}
            return self._encode([corpus.titles[row[d]] or corpus.passage(row[d]) for d in self.doc_ids], "query",
                                self.cfg.data.query_max_length)
        return np.zeros((0, self.doc_emb.shape[1]), np.float32)


def split_queries(data: BeirData, dev_queries: int, seed: int) -> tuple[list[str], list[str]]:
    """(train qids, dev qids) of a split: `dev_queries` of them held out by a seeded permutation."""
    qids = list(data.qrels)
    if dev_queries >= len(qids):
        raise ValueError(f"data.dev_queries={dev_queries} leaves no training queries (split has {len(qids)})")
    perm = np.random.default_rng([seed, 1]).permutation(len(qids))
    dev = {qids[i] for i in perm[:dev_queries]}
    return [q for q in qids if q not in dev], [q for q in qids if q in dev]


def index_metrics(index, doc_ids, q_emb, qids, qrels, dense_rows, *, nprobe: int | None) -> dict[str, float]:
    """NDCG@10 / MRR@10 / R@100 (qrels) of `index`'s top-1000 and its dense-R@10/100 against `dense_rows`
    ([len(qids), >=100] Flat teacher rows)."""
    from jdr.evaluate import compute_metrics, search_run
    from jdr.index.faiss_index import search
    from jdr.vq.train import teacher_recall

    m = compute_metrics({q: qrels[q] for q in qids}, search_run(q_emb, qids, index, doc_ids, 1000, nprobe=nprobe))
    rows = search(index, q_emb, 100, nprobe=nprobe)[1]
    return {"ndcg@10": m["ndcg@10"], "mrr@10": m["mrr@10"], "recall@100": m["recall@100"],
            "dense_r@10": teacher_recall(rows, dense_rows, 10), "dense_r@100": teacher_recall(rows, dense_rows, 100)}


def _nprobe(cfg, override: int | None) -> int | None:
    nlist = cfg.vq.nlist
    if not nlist:
        return None
    return min(override or cfg.vq.nprobe or nlist, nlist)


def load_teacher(cfg, workdir: Path | None = None) -> tuple[Teacher, Path]:
    """Validate `cfg.data` and return (Teacher, resolved dataset dir)."""
    if cfg.data.pseudo_queries not in PSEUDO:
        raise ValueError(f"data.pseudo_queries: {cfg.data.pseudo_queries!r} is not one of {', '.join(PSEUDO)}")
    if cfg.data.embeddings and not Path(cfg.data.embeddings).is_dir():
        raise DataError(cfg.data.embeddings, "data.embeddings: no such directory")
    data_dir = resolve_dataset(cfg.data.dataset)
    return Teacher(cfg, data_dir, workdir), data_dir


def _train(args) -> int:
    from jdr.config import apply_overrides, load_config, to_dict
    from jdr.index.faiss_index import build_index, load_index, search
    from jdr.index.store import save_embeddings
    from jdr.io import atomic_write
    from jdr.run_info import write_run_record
    from jdr.vq.config import vq_config
    from jdr.vq.export import save_faiss, save_vq
    from jdr.vq.init import init_from_faiss, read_faiss
    from jdr.vq.train import spec_from_config, train_distill_vq

    overrides = getattr(args, "config_overrides", None) or []
    if args.config is None:
        cfg = vq_config()
        apply_overrides(cfg, overrides)
    else:
        cfg = load_config(args.config, overrides)
    workdir = Path(args.workdir)
    _set_threads(args.threads)
    teacher, data_dir = load_teacher(cfg)
    spec = spec_from_config(cfg, teacher.doc_emb.shape[1])  # shape errors before any training
    data = load_beir(data_dir, cfg.data.train_split)
    train_ids, dev_ids = split_queries(data, cfg.data.dev_queries, cfg.seed)
    train_q = np.concatenate([teacher.queries(train_ids), teacher.pseudo_queries()])
    t0 = time.time()
    if cfg.vq.init_index:
        faiss_init = load_index(cfg.vq.init_index)
        if faiss_init.ntotal != len(teacher.doc_ids):
            raise DataError(cfg.vq.init_index, f"vq.init_index holds {faiss_init.ntotal} vectors, not {len(teacher.doc_ids)}")
        vq = read_faiss(faiss_init, spec, teacher.doc_emb)
    else:
        vq, faiss_init = init_from_faiss(teacher.doc_emb, spec, train_sample=cfg.vq.train_sample or None,
                                         seed=cfg.seed)
    tower = None
    if cfg.train.query_encoder:
        if cfg.data.pseudo_queries != "none":
            raise ValueError("train.query_encoder: pseudo-queries have no query text; set data.pseudo_queries=none")
        tower = teacher.query_tower()
    result = train_distill_vq(teacher.doc_emb, train_q, cfg, init=vq, query_tower=tower,
                              query_texts=teacher.texts(train_ids) if tower is not None else None)
    vq, history, tower = result
    train_s = time.time() - t0
    workdir.mkdir(parents=True, exist_ok=True)
    if tower is not None:
        tower.export(workdir / QUERY_ENCODER_DIR)
    index = save_faiss(vq, teacher.doc_emb, workdir / "index.faiss")
    save_vq(vq, workdir / "vq.safetensors")
    with atomic_write(workdir / "index.faiss.ids.txt") as f:
        f.write("".join(f"{i}\n" for i in teacher.doc_ids))
    if not cfg.data.embeddings:
        save_embeddings(workdir / "teacher_corpus", teacher.doc_emb, teacher.doc_ids, model=cfg.data.model,
                        tower="passage")
    metrics = {"train_seconds": train_s, "train_queries": len(train_ids), "pseudo_queries": len(train_q) - len(train_ids),
               "final_loss": history[-1]["loss"] if history else None}
    if dev_ids:
        dev_q = teacher.queries(dev_ids)
        dense = search(build_index(teacher.doc_emb, "Flat"), dev_q, 100)[1]
        nprobe = _nprobe(cfg, None)
        student_q = dev_q if tower is None else tower.embed(teacher.texts(dev_ids))
        metrics["dev"] = {name: index_metrics(ix, teacher.doc_ids, q, dev_ids, data.qrels, dense, nprobe=nprobe)
                          for name, ix, q in (("faiss_init", faiss_init, dev_q), ("distill_vq", index, student_q))}
        metrics["dev"]["flat"] = index_metrics(build_index(teacher.doc_emb, "Flat"), teacher.doc_ids, dev_q, dev_ids,
                                               data.qrels, dense, nprobe=None)
    with atomic_write(workdir / "history.json") as f:
        json.dump(history, f)
    with atomic_write(workdir / "metrics.json") as f:
        json.dump(metrics, f, indent=2)
    write_run_record(workdir, to_dict(cfg), cfg.seed, train_seconds=train_s)
    print(json.dumps(metrics) if args.json else _format(metrics))
    return 0


def _format(metrics: dict) -> str:
    lines = [f"trained in {metrics['train_seconds']:.1f}s on {metrics['train_queries']} queries"
             f" (+{metrics['pseudo_queries']} pseudo-queries)"]
    for name, m in metrics.get("dev", {}).items():
        lines.append(f"  dev {name:<11} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return "\n".join(lines)


def _set_threads(n: int) -> None:
    if n:
        import faiss

        faiss.omp_set_num_threads(n)


def _evaluate(args) -> int:
    from jdr.index.faiss_index import build_index, load_index, search
    from jdr.index.store import load_ids

    workdir = Path(args.workdir)
    record = workdir / "run.json"
    if not record.is_file():
        raise DataError(record, "no such file (not a `jdr vq train` workdir?)")
    cfg = ml_collections.ConfigDict(json.loads(record.read_text())["config"])
    if args.data:
        cfg.data.dataset = args.data
    _set_threads(args.threads)
    index = load_index(workdir / "index.faiss")
    doc_ids = load_ids(workdir / "index.faiss.ids.txt")
    teacher, data_dir = load_teacher(cfg, workdir)
    if teacher.doc_ids != doc_ids:
        raise DataError(workdir / "index.faiss.ids.txt", "doc ids differ from the teacher corpus of --data")
    data = load_beir(data_dir, args.split)
    qids = list(data.qrels)
    q_emb = teacher.queries(qids)
    flat = build_index(teacher.doc_emb, "Flat")
    dense = search(flat, q_emb, 100)[1]
    student_q = q_emb
    if (workdir / QUERY_ENCODER_DIR).is_dir():  # "Distill-VQ + query encoder": queries go through the trained tower
        from jdr.vq.query_tower import QueryTower

        tower = QueryTower.load(workdir / QUERY_ENCODER_DIR, max_length=cfg.data.query_max_length)
        student_q = tower.embed(teacher.texts(qids), batch_size=cfg.data.batch_size)
    out = {"split": args.split, "queries": len(qids), "nprobe": _nprobe(cfg, args.nprobe),
           **index_metrics(index, doc_ids, student_q, qids, data.qrels, dense, nprobe=_nprobe(cfg, args.nprobe))}
    if args.flat:
        out["flat"] = index_metrics(flat, doc_ids, q_emb, qids, data.qrels, dense, nprobe=None)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{cfg.data.dataset} ({args.split}, {len(qids)} queries), nprobe {out['nprobe']}")
        for k in ("ndcg@10", "mrr@10", "recall@100", "dense_r@10", "dense_r@100"):
            print(f"  {k:<12} {out[k]:.4f}" + (f"   (flat {out['flat'][k]:.4f})" if args.flat else ""))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `train` and `evaluate` sub-subcommands of `jdr vq` to `parser`."""
    sub = parser.add_subparsers(dest="vq_command", required=True)
    t = sub.add_parser("train", help="distil a faiss IVF-PQ / PQ index from the dense teacher")
    t.add_argument("--config", default=None, help="config file (configs/scifact_vq*.py); overrides: --config.vq.M=16")
    t.add_argument("--workdir", required=True, help="output dir: index.faiss, run.json, history.json, metrics.json")
    e = sub.add_parser("evaluate", help="NDCG@10 / MRR@10 / R@100 and dense recall of a trained index")
    e.add_argument("--workdir", required=True, help="a `jdr vq train` workdir")
    e.add_argument("--data", default=None, help="BEIR dataset name or dir (default: the training config's)")
    e.add_argument("--split", default="test")
    e.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: config vq.nprobe, else all)")
    e.add_argument("--flat", action="store_true", help="also report the exact Flat teacher")
    for p in (t, e):
        p.add_argument("--json", action="store_true", help="print one JSON object")
        # Default 0: faiss's own default, every core (k-means and PQ training dominate `jdr vq`). Pass 1 where
        # other jobs share the cores (OpenMP threads that compete spin and slow everything down).
        p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (default 0: all cores)")


def run(args: argparse.Namespace) -> int:
    """Run `jdr vq train` or `jdr vq evaluate`; returns the exit code. Bad input raises one-line ValueErrors."""
    if args.vq_command == "evaluate" and getattr(args, "config_overrides", None):
        raise ValueError("--config.* overrides only apply to `jdr vq train`")
    return _train(args) if args.vq_command == "train" else _evaluate(args)
