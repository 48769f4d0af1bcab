"""Distill-VQ on a BEIR dataset with a fixed dense teacher, workdir in, workdir out (`jdr vq train / evaluate`).

A workdir holds `index.faiss` (+ `index.faiss.ids.txt`, row i = line i), `vq.safetensors` (the jdr VQIndex),
`run.json` (config, versions, train seconds), `history.json` (per-step losses), `metrics.json` (dev metrics of the
faiss init and the trained index), `checkpoints/` (orbax; a rerun of the same command resumes from the latest),
`query_encoder/` (the trained query tower, with `train.query_encoder`) and, when the corpus was encoded rather than
read from `data.embeddings`, `teacher_corpus/` (the teacher's document embeddings, which `evaluate` needs for
dense recall).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from jdr.data.beir import load_beir
from jdr.data.split import judged_queries, split_dev
from jdr.errors import DataError
from jdr.vq.teacher import load_teacher

QUERY_ENCODER_DIR = "query_encoder"  # trained query tower (HF + sentence-transformers dir), train.query_encoder


def index_metrics(index, doc_ids, q_emb, qids, qrels, dense_rows, *, nprobe: int | None) -> dict[str, float]:
    """NDCG@10 / MRR@10 / R@100 (qrels) of `index`'s top-1000 and its dense-R@10/100 against `dense_rows`
    ([len(qids), >=100] Flat teacher rows)."""
    from jdr.evaluate import compute_metrics, search_run
    from jdr.index.faiss_index import search
    from jdr.vq.train import teacher_recall

    m = compute_metrics({q: qrels[q] for q in qids}, search_run(q_emb, qids, index, doc_ids, 1000, nprobe=nprobe))
    rows = search(index, q_emb, 100, nprobe=nprobe)[1]
    return {
        "ndcg@10": m["ndcg@10"],
        "mrr@10": m["mrr@10"],
        "recall@100": m["recall@100"],
        "dense_r@10": teacher_recall(rows, dense_rows, 10),
        "dense_r@100": teacher_recall(rows, dense_rows, 100),
    }


def probe_count(cfg, override: int | None) -> int | None:
    """IVF lists probed: `override`, else `vq.nprobe`, else all (None without IVF lists)."""
    nlist = cfg.vq.nlist
    if not nlist:
        return None
    return min(override or cfg.vq.nprobe or nlist, nlist)


def train_workdir(cfg, workdir) -> dict:
    """Distil the index `cfg` describes into `workdir` (see the module docstring) -> the `metrics.json` dict. The
    dev queries are `data.dev_queries` of the train split held out by `jdr.data.split.split_dev` (as `jdr train`).

    Training checkpoints to `<workdir>/checkpoints` and resumes from there (`jdr.vq.resume`); after a preemption
    notice (SIGTERM) it returns `{"step", "stopped": True, "preempted": True}` having exported nothing."""
    from jdr.config import to_dict
    from jdr.index.faiss_index import build_index, load_index, search
    from jdr.index.store import save_embeddings
    from jdr.io import atomic_write
    from jdr.run_info import write_run_record
    from jdr.vq.export import save_faiss, save_vq
    from jdr.vq.init import init_from_faiss, read_faiss
    from jdr.vq.train import spec_from_config, train_distill_vq

    workdir = Path(workdir)
    teacher, data_dir = load_teacher(cfg)
    spec = spec_from_config(cfg, teacher.doc_emb.shape[1])  # shape errors before any training
    data = load_beir(data_dir, cfg.data.train_split)
    train_ids, dev_ids = split_dev(judged_queries(data.qrels), cfg.data.dev_queries, cfg.seed)
    train_q = np.concatenate([teacher.queries(train_ids), teacher.pseudo_queries()])
    t0 = time.time()
    if cfg.vq.init_index:
        faiss_init = load_index(cfg.vq.init_index)
        if faiss_init.ntotal != len(teacher.doc_ids):
            raise DataError(
                cfg.vq.init_index, f"vq.init_index holds {faiss_init.ntotal} vectors, not {len(teacher.doc_ids)}"
            )
        vq = read_faiss(faiss_init, spec, teacher.doc_emb)
    else:
        vq, faiss_init = init_from_faiss(teacher.doc_emb, spec, train_sample=cfg.vq.train_sample or None, seed=cfg.seed)
    tower = None
    if cfg.train.query_encoder:
        if cfg.data.pseudo_queries != "none":
            raise ValueError("train.query_encoder: pseudo-queries have no query text; set data.pseudo_queries=none")
        tower = teacher.query_tower()
    workdir.mkdir(parents=True, exist_ok=True)
    result = train_distill_vq(
        teacher.doc_emb,
        train_q,
        cfg,
        init=vq,
        query_tower=tower,
        query_texts=teacher.texts(train_ids) if tower is not None else None,
        workdir=workdir,
    )
    if result.stopped:  # preempted: the checkpoint is saved, nothing is exported; a rerun resumes
        return {"step": len(result.history), "stopped": True, "preempted": result.stopped == "preempted"}
    vq, history, tower = result.vq, result.history, result.query_tower
    train_s = time.time() - t0
    if tower is not None:
        tower.export(workdir / QUERY_ENCODER_DIR)
    index = save_faiss(vq, teacher.doc_emb, workdir / "index.faiss")
    save_vq(vq, workdir / "vq.safetensors")
    with atomic_write(workdir / "index.faiss.ids.txt") as f:
        f.write("".join(f"{i}\n" for i in teacher.doc_ids))
    if not cfg.data.embeddings:
        save_embeddings(
            workdir / "teacher_corpus", teacher.doc_emb, teacher.doc_ids, model=cfg.data.model, tower="passage"
        )
    metrics = {
        "train_seconds": train_s,
        "train_queries": len(train_ids),
        "pseudo_queries": len(train_q) - len(train_ids),
        "final_loss": history[-1]["loss"] if history else None,
    }
    if dev_ids:
        dev_q = teacher.queries(dev_ids)
        dense = search(build_index(teacher.doc_emb, "Flat"), dev_q, 100)[1]
        nprobe = probe_count(cfg, None)
        student_q = dev_q if tower is None else tower.embed(teacher.texts(dev_ids))
        metrics["dev"] = {
            name: index_metrics(ix, teacher.doc_ids, q, dev_ids, data.qrels, dense, nprobe=nprobe)
            for name, ix, q in (("faiss_init", faiss_init, dev_q), ("distill_vq", index, student_q))
        }
        metrics["dev"]["flat"] = index_metrics(
            build_index(teacher.doc_emb, "Flat"), teacher.doc_ids, dev_q, dev_ids, data.qrels, dense, nprobe=None
        )
    with atomic_write(workdir / "history.json") as f:
        json.dump(history, f)
    with atomic_write(workdir / "metrics.json") as f:
        json.dump(metrics, f, indent=2)
    write_run_record(workdir, to_dict(cfg), cfg.seed, train_seconds=train_s)
    return metrics


def evaluate_workdir(
    workdir, *, data: str | None = None, split: str = "test", nprobe: int | None = None, flat: bool = False
) -> tuple[dict, object]:
    """Score a `train_workdir` index on `split` of its dataset (or `data`) -> (result dict, the run's config)."""
    from jdr.index.faiss_index import build_index, load_index, search
    from jdr.index.store import load_ids

    workdir = Path(workdir)
    record = workdir / "run.json"
    if not record.is_file():
        raise DataError(record, "no such file (not a `jdr vq train` workdir?)")
    cfg = ml_collections.ConfigDict(json.loads(record.read_text())["config"])
    if data:
        cfg.data.dataset = data
    index = load_index(workdir / "index.faiss")
    doc_ids = load_ids(workdir / "index.faiss.ids.txt")
    teacher, data_dir = load_teacher(cfg, workdir)
    if teacher.doc_ids != doc_ids:
        raise DataError(workdir / "index.faiss.ids.txt", "doc ids differ from the teacher corpus of --data")
    beir = load_beir(data_dir, split)
    qids = list(beir.qrels)
    q_emb = teacher.queries(qids)
    flat_index = build_index(teacher.doc_emb, "Flat")
    dense = search(flat_index, q_emb, 100)[1]
    student_q = q_emb
    if (workdir / QUERY_ENCODER_DIR).is_dir():  # "Distill-VQ + query encoder": queries go through the trained tower
        from jdr.vq.query_tower import QueryTower

        tower = QueryTower.load(workdir / QUERY_ENCODER_DIR, max_length=cfg.data.query_max_length)
        student_q = tower.embed(teacher.texts(qids), batch_size=cfg.data.batch_size)
    probes = probe_count(cfg, nprobe)
    out = {
        "split": split,
        "queries": len(qids),
        "nprobe": probes,
        **index_metrics(index, doc_ids, student_q, qids, beir.qrels, dense, nprobe=probes),
    }
    if flat:
        out["flat"] = index_metrics(flat_index, doc_ids, q_emb, qids, beir.qrels, dense, nprobe=None)
    return out, cfg
