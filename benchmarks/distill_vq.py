"""Distill-VQ vs faiss PQ / OPQ+PQ / IVFPQ / OPQ+IVFPQ at several code sizes, on precomputed embeddings.

Inputs are `jdr encode` embedding stores (embeddings.npy + ids.txt): the corpus, the training queries (distillation
needs no labels) and the test queries, plus the test qrels TSV. For each code size B bytes (M = B sub-spaces of
K = 256 codewords) it reports, per method:
  dense-R@10 / dense-R@100 — fraction of the exact dense (Flat) top-k the compressed index returns in its top-k;
  NDCG@10 / R@100 vs qrels  — `jdr.evaluate.compute_metrics` of the compressed index's top-1000 run;
  train_s                   — faiss training (+ Distill-VQ's distillation) wall time.

  python benchmarks/distill_vq.py --corpus emb/corpus --train-queries emb/train --test-queries emb/test \
      --qrels /work/shared/data/scifact/qrels/test.tsv --bytes 48,16,8 --out results/distill_vq.json
  python benchmarks/distill_vq.py --random   # smoke test on random embeddings (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np

from jdr.data.beir import load_qrels
from jdr.evaluate import compute_metrics, search_run
from jdr.index.faiss_index import build_index, search
from jdr.index.store import load_embeddings
from jdr.io import atomic_write
from jdr.vq.config import vq_config
from jdr.vq.export import export_faiss
from jdr.vq.layer import VQSpec
from jdr.vq.train import teacher_recall, train_distill_vq


def _random_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    d, n = 32, 2000
    docs = rng.standard_normal((n, d)).astype(np.float32)
    basis = rng.standard_normal((6, d))
    tr, te = (rng.standard_normal((m, 6)) @ basis + 0.3 * rng.standard_normal((m, d)) for m in (300, 100))
    doc_ids, test_ids = [f"d{i}" for i in range(n)], [f"q{i}" for i in range(len(te))]
    # Relevant = the dense top-3 (so qrels metrics are defined; the teacher scores NDCG 1 on them).
    top = search(build_index(docs, "Flat"), te.astype(np.float32), 3)[1]
    qrels = {q: {doc_ids[r]: 1 for r in rows} for q, rows in zip(test_ids, top)}
    return docs, doc_ids, tr.astype(np.float32), te.astype(np.float32), test_ids, qrels


def _evaluate(index, name, nlist, nprobe, test_q, test_ids, doc_ids, qrels, dense_rows, train_s):
    probe = min(nprobe, nlist) if nlist else None
    run = search_run(test_q, test_ids, index, doc_ids, 1000, nprobe=probe)
    rows = search(index, test_q, 100, nprobe=probe)[1]
    m = compute_metrics(qrels, run)
    return {
        "method": name,
        "dense_r@10": teacher_recall(rows, dense_rows, 10),
        "dense_r@100": teacher_recall(rows, dense_rows, 100),
        "ndcg@10": m["ndcg@10"],
        "r@100": m["recall@100"],
        "train_s": train_s,
    }


def run_benchmark(docs, doc_ids, train_q, test_q, test_ids, qrels, *, code_bytes, nlist, nprobe, steps, seed=0):
    """All methods at every code size -> list of result rows (dicts)."""
    d = docs.shape[1]
    dense_rows = search(build_index(docs, "Flat"), test_q, 100)[1]
    results = [_evaluate(build_index(docs, "Flat"), "Flat (teacher)", 0, 0, test_q, test_ids, doc_ids, qrels,
                         dense_rows, 0.0) | {"bytes": 4 * d}]
    for b in code_bytes:
        variants = [("PQ", 0, False), ("OPQ+PQ", 0, True), ("IVFPQ", nlist, False), ("OPQ+IVFPQ", nlist, True)]
        for name, nl, opq in variants:
            spec = VQSpec(d=d, M=b, K=256, nlist=nl, opq=opq)
            t0 = time.time()
            index = build_index(docs, spec.factory(), seed=seed)
            results.append(_evaluate(index, f"faiss {name}", nl, nprobe, test_q, test_ids, doc_ids, qrels,
                                     dense_rows, time.time() - t0) | {"bytes": b})
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        for name, nl in (("OPQ+PQ", 0), ("OPQ+IVFPQ", nlist)):
            cfg = vq_config()
            cfg.seed, cfg.vq.M, cfg.vq.nlist, cfg.vq.opq, cfg.train.steps = seed, b, nl, True, steps
            cfg.train.batch_size = min(cfg.train.batch_size, len(train_q))
            t0 = time.time()
            vq, _ = train_distill_vq(docs, train_q, cfg)
            index = export_faiss(vq, docs)
            results.append(_evaluate(index, f"jdr Distill-VQ {name}", nl, nprobe, test_q, test_ids, doc_ids, qrels,
                                     dense_rows, time.time() - t0) | {"bytes": b})
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return results


def format_table(results) -> str:
    """Markdown table of result rows."""
    cols = ["bytes", "method", "dense_r@10", "dense_r@100", "ndcg@10", "r@100", "train_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("corpus", "train-queries", "test-queries"):
        p.add_argument(f"--{name}", help=f"embedding store dir (embeddings.npy + ids.txt) of the {name}")
    p.add_argument("--qrels", help="test qrels TSV (BEIR qrels/test.tsv)")
    p.add_argument("--random", action="store_true", help="smoke test on random embeddings")
    p.add_argument("--bytes", default="48,16,8", help="code sizes in bytes (M sub-spaces of 256 codewords)")
    p.add_argument("--nlist", type=int, default=64, help="IVF lists of the IVF variants")
    p.add_argument("--nprobe", type=int, default=64, help="lists probed at search (default: all 64)")
    p.add_argument("--steps", type=int, default=500, help="Distill-VQ Adam steps")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0 = faiss's default)")
    a = p.parse_args(argv)
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    if a.random:
        docs, doc_ids, train_q, test_q, test_ids, qrels = _random_inputs()
        code_bytes = [b for b in map(int, a.bytes.split(",")) if docs.shape[1] % b == 0] or [8]
        a.nlist = min(a.nlist, 16)
    else:
        missing = [f for f in ("corpus", "train_queries", "test_queries", "qrels") if getattr(a, f) is None]
        if missing:
            p.error("missing --" + ", --".join(m.replace("_", "-") for m in missing) + " (or use --random)")
        docs, doc_ids = load_embeddings(a.corpus, mmap=False)
        train_q, _ = load_embeddings(a.train_queries, mmap=False)
        test_q, test_ids = load_embeddings(a.test_queries, mmap=False)
        qrels = load_qrels(a.qrels, corpus_ids=set(doc_ids))
        code_bytes = [int(b) for b in a.bytes.split(",")]
    docs, train_q, test_q = (np.ascontiguousarray(x, np.float32) for x in (docs, train_q, test_q))
    results = run_benchmark(docs, doc_ids, train_q, test_q, test_ids, qrels, code_bytes=code_bytes,
                            nlist=a.nlist, nprobe=a.nprobe, steps=a.steps)
    print(format_table(results))
    if a.out:
        with atomic_write(a.out) as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
