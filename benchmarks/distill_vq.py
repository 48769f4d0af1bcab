"""Distill-VQ vs faiss PQ / OPQ+PQ / IVFPQ / OPQ+IVFPQ at several code sizes, on precomputed embeddings.

Inputs come from a Distill-VQ config (`data` section: the BEIR dataset and the `jdr encode` embedding stores
`corpus/` + `queries/`; `train` section: the distillation hyper-parameters). Distill-VQ trains on ALL queries of
the train split (no labels used; plus `data.pseudo_queries`) and everything is measured on the test split. For each
code size B bytes (M = B sub-spaces of K = 256 codewords) it reports, per method (and per nprobe for IVF):
  dense-R@10 / dense-R@100 — fraction of the exact dense (Flat) top-k the compressed index returns in its top-k;
  NDCG@10 / R@100 vs qrels  — `jdr.evaluate.per_query_metrics` of the compressed index's top-1000 run;
  train_s                   — faiss training (+ Distill-VQ's distillation) wall time.

  python benchmarks/distill_vq.py --config configs/scifact_vq16.py --bytes 48,16,8 --nlist 256 --nprobe 16,64 \
      --cache .cache/vq_faiss --out benchmarks/results/distill_vq.json
  python benchmarks/distill_vq.py --random   # smoke test on random embeddings (seconds)

Significance (`jdr.compare`): every row carries the 95 % t interval of its mean NDCG@10 over the test queries, and
every Distill-VQ row a paired comparison with the faiss index it started from (same bytes, method and nprobe; the
query-encoder row with faiss OPQ+PQ): the NDCG@10 and R@100 differences with their 95 % intervals, two-sided
paired randomization tests, Holm-corrected over all those comparisons; `†` marks p < 0.05 after correction.

`--ablation` (benchmarks/distill_vq_ablation.py) instead tunes on a dev split carved from the train queries: what
the paper's ablation says matters (joint IVF+PQ training, candidate count, ListNet vs KL, temperature), one factor
at a time, chooses on dev, and reads test once for the chosen configuration against faiss and the base config.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from jdr.compare import MARK, adjust_pvalues, mean_ci, paired_test
from jdr.config import apply_overrides, load_config, to_dict
from jdr.data.beir import load_beir
from jdr.evaluate import per_query_metrics, search_run
from jdr.index.faiss_index import build_index, load_index, save_index, search
from jdr.io import atomic_write
from jdr.vq.config import vq_config
from jdr.vq.export import export_faiss
from jdr.vq.init import read_faiss
from jdr.vq.layer import VQSpec
from jdr.vq.teacher import load_teacher
from jdr.vq.train import teacher_recall, train_distill_vq

FAISS_METHODS = ("PQ", "OPQ+PQ", "IVFPQ", "OPQ+IVFPQ")


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


def evaluate_row(index, name, nlist, nprobe, test_q, test_ids, doc_ids, qrels, dense_rows, train_s):
    """One result row and its per-query NDCG@10 / R@100 ({metric: [n] in `qrels` order}, for the paired tests).
    `test_q` are the student's query embeddings; `dense_rows` the teacher's exact top-100."""
    probe = min(nprobe, nlist) if nlist else None
    run = search_run(test_q, test_ids, index, doc_ids, 1000, nprobe=probe)
    rows = search(index, test_q, 100, nprobe=probe)[1]
    per_query = {
        m: np.array(list(v.values()))
        for m, v in per_query_metrics(qrels, run, metrics=("ndcg@10", "recall@100")).items()
    }
    lo, hi = mean_ci(per_query["ndcg@10"])
    return {
        "method": name,
        "nprobe": probe or "-",
        "dense_r@10": teacher_recall(rows, dense_rows, 10),
        "dense_r@100": teacher_recall(rows, dense_rows, 100),
        "ndcg@10": float(per_query["ndcg@10"].mean()),
        "ndcg@10 95% CI": f"[{lo:.3f}, {hi:.3f}]",
        "r@100": float(per_query["recall@100"].mean()),
        "train_s": train_s,
    }, per_query


def add_significance(results: list[dict], per_query: list[dict], resamples: int = 10_000) -> None:
    """Annotate each Distill-VQ row of `results` (aligned with `per_query`) with its paired comparison against
    the faiss row it started from: `vs faiss` (display) and `significance` (numbers), Holm-corrected over all."""
    where = {(r["bytes"], r["method"], r["nprobe"]): i for i, r in enumerate(results)}
    family = []
    for i, r in enumerate(results):
        if not r["method"].startswith("jdr Distill-VQ"):
            continue
        base = "faiss " + ("OPQ+PQ" if "query encoder" in r["method"] else r["method"].split()[-1])
        j = where.get((r["bytes"], base, r["nprobe"]))
        if j is None:
            continue
        r["significance"] = {"baseline": base}
        for m in ("ndcg@10", "recall@100"):
            test = paired_test(per_query[i][m], per_query[j][m], resamples=resamples)
            r["significance"][m] = test
            family.append((r, m, test))
    for (r, m, test), p_adj in zip(family, adjust_pvalues([t["p_permutation"] for _, _, t in family], "holm")):
        test["p_adjusted"], test["significant"] = float(p_adj), bool(p_adj < 0.05)
    for r in results:
        if "significance" in r:
            t = r["significance"]["ndcg@10"]
            r["vs faiss (NDCG@10)"] = (
                f"{t['diff']:+.3f} [{t['diff_ci'][0]:+.3f}, {t['diff_ci'][1]:+.3f}] "
                f"p {t['p_adjusted']:.3g}" + (MARK if t["significant"] else "")
            )


def trained_faiss_index(docs, factory, seed, cache):
    """Train (or read from `cache`) the faiss index of `factory` -> (index, training seconds)."""
    path = Path(cache) / f"{factory}.s{seed}.faiss" if cache else None
    if path is not None and path.is_file():
        return load_index(path), json.loads(path.with_suffix(".json").read_text())["train_s"]
    t0 = time.time()
    index = build_index(docs, factory, seed=seed)
    train_s = time.time() - t0
    if path is not None:
        save_index(index, path)
        with atomic_write(path.with_suffix(".json")) as f:
            json.dump({"train_s": train_s, "n": int(docs.shape[0])}, f)
    return index, train_s


def run_benchmark(
    docs,
    doc_ids,
    train_q,
    test_q,
    test_ids,
    qrels,
    *,
    code_bytes,
    nlist,
    nprobes,
    cfg,
    cache=None,
    distill=True,
    tower=None,
    texts=None,
    methods=FAISS_METHODS,
):
    """All methods at every code size -> list of result rows (dicts). IVF methods get one row per nprobe.
    Distill-VQ starts from the very faiss OPQ index reported beside it (its train_s includes that training).
    With `tower` (a `QueryTower` of the teacher) and `texts` = (train texts, test texts), also "Distill-VQ + query
    encoder" on OPQ+PQ: the tower trains with the index and embeds the test queries itself. `methods` picks the
    faiss baselines (a subset of FAISS_METHODS); Distill-VQ runs from each OPQ one picked."""
    d = docs.shape[1]
    dense_rows = search(build_index(docs, "Flat"), test_q, 100)[1]
    results, per_query = [], []

    def emit(index, name, nl, train_s, b, queries=test_q):
        for probe in sorted({min(p, nl) for p in nprobes}) if nl else [0]:
            row, values = evaluate_row(index, name, nl, probe, queries, test_ids, doc_ids, qrels, dense_rows, train_s)
            results.append(row | {"bytes": b})
            per_query.append(values)
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)

    emit(build_index(docs, "Flat"), "Flat (teacher)", 0, 0.0, 4 * d)

    for b in code_bytes:
        inits = {}
        for name, nl, opq in (
            ("PQ", 0, False),
            ("OPQ+PQ", 0, True),
            ("IVFPQ", nlist, False),
            ("OPQ+IVFPQ", nlist, True),
        ):
            if name not in methods:
                continue
            spec = VQSpec(d=d, M=b, K=256, nlist=nl, opq=opq)
            index, train_s = trained_faiss_index(docs, spec.factory(), cfg.seed, cache)
            emit(index, f"faiss {name}", nl, train_s, b)
            if opq:
                inits[name] = (spec, index, train_s)
        if not distill:
            continue
        for name, (spec, index, faiss_s) in inits.items():
            c = copy.deepcopy(cfg)
            c.vq.M, c.vq.nlist, c.vq.opq = b, spec.nlist, True
            c.train.batch_size = min(c.train.batch_size, len(train_q))
            t0 = time.time()
            vq = train_distill_vq(docs, train_q, c, init=read_faiss(index, spec, docs)).vq
            index = export_faiss(vq, docs)
            emit(index, f"jdr Distill-VQ {name}", spec.nlist, faiss_s + time.time() - t0, b)
        if tower is not None:
            spec, index, faiss_s = inits["OPQ+PQ"]
            c = copy.deepcopy(cfg)
            c.vq.M, c.vq.nlist, c.vq.opq, c.train.query_encoder = b, 0, True, True
            t0 = time.time()
            res = train_distill_vq(
                docs, train_q, c, init=read_faiss(index, spec, docs), query_tower=tower, query_texts=texts[0]
            )
            train_s = faiss_s + time.time() - t0
            emit(
                export_faiss(res.vq, docs),
                "jdr Distill-VQ + query encoder OPQ+PQ",
                0,
                train_s,
                b,
                queries=res.query_tower.embed(texts[1]),
            )
    add_significance(results, per_query)
    return results


def format_table(results) -> str:
    """Markdown table of result rows; `†` marks a difference significant after correction."""
    cols = [
        "bytes",
        "method",
        "nprobe",
        "dense_r@10",
        "dense_r@100",
        "ndcg@10",
        "ndcg@10 95% CI",
        "r@100",
        "vs faiss (NDCG@10)",
        "train_s",
    ]
    if any("vs config (NDCG@10)" in r for r in results):  # the ablation's dev-chosen rows
        cols.insert(-1, "vs config (NDCG@10)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append(
            "| " + " | ".join(f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |"
        )
    return "\n".join(lines)


def _load(cfg):
    """Teacher embeddings of `cfg.data`: corpus, ALL train-split queries (+ pseudo-queries), test queries + qrels;
    and the Teacher with (train, test) query ids (for the query-encoder variant)."""
    teacher, data_dir = load_teacher(cfg)
    train_ids = list(load_beir(data_dir, cfg.data.train_split).qrels)
    train_q = np.concatenate([teacher.queries(train_ids), teacher.pseudo_queries()])
    test = load_beir(data_dir, "test")
    test_ids = list(test.qrels)
    print(
        f"{len(teacher.doc_ids)} docs, {len(train_ids)} train queries + {len(train_q) - len(train_ids)} "
        f"pseudo-queries, {len(test_ids)} test queries",
        file=sys.stderr,
    )
    inputs = teacher.doc_emb, teacher.doc_ids, train_q, teacher.queries(test_ids), test_ids, test.qrels
    return inputs, teacher, (train_ids, test_ids), data_dir


def _dev_inputs(cfg, teacher, data_dir, n_dev: int):
    """--ablation: (train-minus-dev query embeddings (+ pseudo-queries), dev embeddings, dev ids, dev qrels)."""
    from jdr.data.split import judged_queries, split_dev

    data = load_beir(data_dir, cfg.data.train_split)
    train_ids, dev_ids = split_dev(judged_queries(data.qrels), n_dev, cfg.seed)
    train_q = np.concatenate([teacher.queries(train_ids), teacher.pseudo_queries()])
    return train_q, teacher.queries(dev_ids), dev_ids, {q: data.qrels[q] for q in dev_ids}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="Distill-VQ config (configs/scifact_vq*.py): data + train sections")
    p.add_argument("--set", action="append", default=[], help="config override a.b=v (repeatable)")
    p.add_argument("--random", action="store_true", help="smoke test on random embeddings")
    p.add_argument("--bytes", default="48,16,8", help="code sizes in bytes (M sub-spaces of 256 codewords)")
    p.add_argument("--nlist", type=int, default=256, help="IVF lists of the IVF variants")
    p.add_argument("--nprobe", default="16,64", help="lists probed at search, comma-separated")
    p.add_argument("--cache", help="dir to keep / reuse trained faiss indexes (<factory>.s<seed>.faiss)")
    p.add_argument("--faiss-only", action="store_true", help="skip Distill-VQ (e.g. to fill --cache)")
    p.add_argument(
        "--query-encoder",
        action="store_true",
        help="add Distill-VQ + query encoder (OPQ+PQ; lr train.encoder_lr; needs no pseudo-queries)",
    )
    p.add_argument(
        "--methods",
        default=",".join(FAISS_METHODS),
        help="faiss baselines to run, comma-separated (Distill-VQ starts from the OPQ ones)",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="dev-set ablation, then the dev-chosen config on test "
        "(benchmarks/distill_vq_ablation.py); --methods picks OPQ+PQ and/or OPQ+IVFPQ",
    )
    p.add_argument(
        "--dev-queries",
        type=int,
        default=None,
        help="--ablation: train queries held out as dev (default: the config's data.dev_queries, else 100)",
    )
    p.add_argument("--no-test", action="store_true", help="--ablation: stop after the dev choice")
    p.add_argument("--out", help="write the results as JSON here (and, with --ablation, markdown beside it)")
    p.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (0 = faiss's default)")
    a = p.parse_args(argv)
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    cfg = load_config(a.config, a.set) if a.config else vq_config()
    if not a.config:
        apply_overrides(cfg, a.set)
    methods = tuple(a.methods.split(","))
    if set(methods) - set(FAISS_METHODS):
        p.error(f"--methods: unknown {sorted(set(methods) - set(FAISS_METHODS))}; choose from {FAISS_METHODS}")
    if a.query_encoder and "OPQ+PQ" not in methods:
        p.error("--query-encoder starts from faiss OPQ+PQ: keep it in --methods")
    tower = texts = None
    if a.random:
        if a.query_encoder:
            p.error("--query-encoder needs a text dataset (--config), not --random")
        docs, doc_ids, train_q, test_q, test_ids, qrels = _random_inputs()
        code_bytes = [b for b in map(int, a.bytes.split(",")) if docs.shape[1] % b == 0] or [8]
        a.nlist = min(a.nlist, 16)
    else:
        if not a.config:
            p.error("--config is required (or use --random)")
        (docs, doc_ids, train_q, test_q, test_ids, qrels), teacher, (train_ids, test_ids), data_dir = _load(cfg)
        if a.query_encoder:
            if cfg.data.pseudo_queries != "none":
                p.error("--query-encoder: pseudo-queries have no text; set data.pseudo_queries=none")
            tower, texts = teacher.query_tower(), (teacher.texts(train_ids), teacher.texts(test_ids))
        code_bytes = [int(b) for b in a.bytes.split(",")]
    if a.ablation:
        return _ablation(
            a,
            cfg,
            docs,
            doc_ids,
            train_q,
            test_q,
            test_ids,
            qrels,
            code_bytes,
            methods,
            None if a.random else (teacher, data_dir),
        )
    results = run_benchmark(
        docs,
        doc_ids,
        train_q,
        test_q,
        test_ids,
        qrels,
        code_bytes=code_bytes,
        nlist=a.nlist,
        nprobes=[int(x) for x in a.nprobe.split(",")],
        cfg=cfg,
        cache=a.cache,
        distill=not a.faiss_only,
        tower=tower,
        texts=texts,
        methods=methods,
    )
    print(format_table(results))
    if a.out:
        with atomic_write(a.out) as f:
            json.dump(
                {
                    "command": " ".join(["python", "benchmarks/distill_vq.py", *sys.argv[1:]]),
                    "config": to_dict(cfg),
                    "results": results,
                },
                f,
                indent=2,
            )
    return 0


def _ablation(a, cfg, docs, doc_ids, train_q, test_q, test_ids, qrels, code_bytes, methods, teacher) -> int:
    from distill_vq_ablation import format_ablation, random_dev_split, run_ablation

    if a.query_encoder:
        raise SystemExit("--ablation tunes the index only: drop --query-encoder")
    methods = tuple(m for m in methods if m.startswith("OPQ"))  # Distill-VQ starts from the OPQ indexes
    if teacher is None:
        inputs = random_dev_split(train_q, docs, a.dev_queries or 60)
    else:
        inputs = _dev_inputs(cfg, *teacher, a.dev_queries or cfg.data.dev_queries or 100)
    out = run_ablation(
        docs,
        doc_ids,
        *inputs,
        train_q,
        test_q,
        test_ids,
        qrels,
        code_bytes=code_bytes,
        nlist=a.nlist,
        nprobes=[int(x) for x in a.nprobe.split(",")],
        cfg=cfg,
        cache=a.cache,
        methods=methods or ("OPQ+PQ",),
        test=not a.no_test,
    )
    command = " ".join(["python", "benchmarks/distill_vq.py", *sys.argv[1:]])
    text = f"Command: `{command}`\n\nDev ({len(inputs[2])} held-out train queries):\n\n{format_ablation(out)}"
    if "test" in out:
        text += "\n\nTest (read once; trained on all train queries):\n\n" + format_table(out["test"])
    print(text)
    if a.out:
        with atomic_write(a.out) as f:
            json.dump({"command": command, "config": to_dict(cfg), **out}, f, indent=2)
        with atomic_write(Path(a.out).with_suffix(".md")) as f:
            f.write(f"# Distill-VQ ablation on dev\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
