"""Every byte budget in one table (issue 25): SciFact test, the released all-MiniLM-L6-v2, paired tests against
float32 Flat.

  python benchmarks/byte_budget.py                               # released-model rows (no corpus re-encoding)
  python benchmarks/byte_budget.py --matryoshka-workdir W        # + a Matryoshka-trained model's rows
                                                                   (configs/scifact_matryoshka.py)

Rows (top-k 100 per query: NDCG@10 and R@100 need no more; every index built here, faiss on 1 thread):
- scalar: float32 Flat (1536 B/doc), float16 (faiss SQfp16, 768 B), int8 (`jdr index --quantize int8`: per-dim
  ranges of the corpus, 384 B);
- binary: sign bits (48 B, Hamming), and re-scored: the top k*M (M = 1, 4, 10) re-scored with the float query
  against int8 document vectors (`--quantize binary --rescore-vectors int8`: 48 B searched in RAM + 384 B read
  only for the candidates, "+ rescore B");
- the released model truncated to its first 256 / 128 / 64 / 32 dims (re-normalised, `--dim k`), float and binary
  (binary also re-scored with M = 10 against int8 of the truncated vectors): no Matryoshka training;
- faiss PQ and OPQ+PQ at 48 / 16 / 8 B (trained on the whole corpus, seed 0);
- Distill-VQ (benchmarks/results/distill_vq*.json) as stated references: those runs kept no per-query results, so
  they are reported as stated and take no paired test;
- with `--matryoshka-workdir`, that model (its corpus encoded here once, cached) at 384 / 256 / 128 / 64 / 32 dims,
  float and binary.
Resumable: each row's run (`ROOT/runs/ROW.trec`) and its costs (`ROOT/runs/ROW.json`) are skipped when present.
Search ms/query: the best of 3 searches of all 300 queries on one thread, marked "under load" unless `--idle`.
Writes benchmarks/results/byte_budget.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jdr.compare import compare_scores, format_markdown  # noqa: E402
from jdr.evaluate import per_query_metrics, read_trec_run, write_trec_run  # noqa: E402
from jdr.io import atomic_write  # noqa: E402
from jdr.run_info import cpu_model  # noqa: E402

METRICS = ("ndcg@10", "recall@100")
CACHED_CORPUS = REPO / ".cache" / "emb" / "minilm_f32" / "corpus"  # a `jdr encode` store of the released model
RESULTS = REPO / "benchmarks" / "results"
REFERENCES = REPO / "benchmarks" / "results"  # distill_vq*.json
FLOAT32_NDCG_STATED = 0.6451  # benchmarks/results/distill_vq.md, the same model and corpus


def rows(d: int, matryoshka: bool) -> list[dict]:
    """Every row: name, family (one curve in the PNG), model, dims, index kind and its parameters."""
    out = [
        dict(name="float32", family="scalar (fp32 / fp16 / int8)", dims=d, faiss="Flat"),
        dict(name="float16", family="scalar (fp32 / fp16 / int8)", dims=d, faiss="SQfp16"),
        dict(name="int8", family="scalar (fp32 / fp16 / int8)", dims=d, quantize="int8"),
    ]
    out.append(dict(name="binary", family="binary, first k dims", dims=d, quantize="binary"))
    for m in (1, 4, 10):
        out.append(
            dict(
                name=f"binary_rescore{m}",
                family="binary + int8 rescore (M=10), first k dims" if m == 10 else "binary + int8 rescore (M=1, 4)",
                dims=d,
                quantize="binary",
                rescore=m,
            )
        )
    for k in (256, 128, 64, 32):
        out.append(dict(name=f"dim{k}", family="float, first k dims (released)", dims=k, faiss="Flat"))
        out.append(dict(name=f"dim{k}_binary", family="binary, first k dims", dims=k, quantize="binary"))
        out.append(
            dict(
                name=f"dim{k}_binary_rescore10",
                family="binary + int8 rescore (M=10), first k dims",
                dims=k,
                quantize="binary",
                rescore=10,
            )
        )
    for b in (48, 16, 8):
        out.append(dict(name=f"pq{b}", family="faiss PQ", dims=d, faiss=f"PQ{b}"))
        out.append(dict(name=f"opq{b}", family="faiss OPQ+PQ", dims=d, faiss=f"OPQ{b},PQ{b}"))
    if matryoshka:
        for k in (384, 256, 128, 64, 32):
            out.append(dict(name=f"mrl{k}", family="Matryoshka-trained, float", dims=k, faiss="Flat", model="mrl"))
            out.append(
                dict(name=f"mrl{k}_binary", family="Matryoshka-trained, binary", dims=k, quantize="binary", model="mrl")
            )
    for r in out:
        r.setdefault("model", "released")
        r["label"] = label(r)
    return out


def label(r: dict) -> str:
    who = "Matryoshka model" if r["model"] == "mrl" else "released"
    what = r.get("faiss") or r["quantize"]
    what = {
        "Flat": "float32 Flat",
        "SQfp16": "float16 (faiss SQfp16)",
        "int8": "int8 (calibrated ranges)",
        "binary": "binary (Hamming)",
    }.get(what, f"faiss {what}")
    if r.get("rescore"):
        what += f" + int8 rescore M={r['rescore']}"
    return f"{who}, {r['dims']} dims, {what}" if r["dims"] != 384 or r["model"] == "mrl" else f"{who}, {what}"


def truncate(x: np.ndarray, k: int) -> np.ndarray:
    """The first k dims, re-normalised: what `jdr encode --dim k` returns (EncoderSpec.truncate_dim)."""
    x = np.ascontiguousarray(x[:, :k], dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def wait_for(store: Path, timeout_s: float = 3600) -> None:
    start = time.time()
    while not ((store / "meta.json").is_file() and (store / "ids.txt").is_file()):
        if time.time() - start > timeout_s:
            raise SystemExit(f"{store}: no embedding store after {timeout_s:.0f} s")
        print(f"waiting for {store} ...", file=sys.stderr)
        time.sleep(30)


def embeddings(args, root: Path, test) -> dict[str, tuple[np.ndarray, list[str], np.ndarray, list[str]]]:
    """model -> (corpus emb, doc ids, query emb, query ids); queries (and a Matryoshka corpus) cached in ROOT."""
    from jdr.index.store import load_embeddings, save_embeddings
    from jdr.models import encode_texts, load  # any model reference: a workdir too

    qids = sorted(test.queries)
    models = {"released": (args.corpus, "minilm")}
    if args.matryoshka_workdir:
        models["mrl"] = (root / "mrl_corpus", args.matryoshka_workdir)
    out = {}
    for name, (corpus, model) in models.items():
        params = None
        if name == "released":
            wait_for(corpus)
        elif not (corpus / "ids.txt").is_file():
            params, spec, tok = load(model, step="best", passage_max_length=256)  # the dev-chosen checkpoint
            emb = encode_texts(params, spec, tok, test.corpus.passages(), tower="passage")
            save_embeddings(corpus, emb, test.corpus.ids, model=str(model), tower="passage")
        q_store = root / f"{name}_queries"
        if not (q_store / "ids.txt").is_file():
            if params is None:
                params, spec, tok = load(model, step="best") if name == "mrl" else load(hf_minilm())
            q = encode_texts(params, spec, tok, [test.queries[i] for i in qids], tower="query")
            save_embeddings(q_store, q, qids, model=str(model), tower="query")
        docs, doc_ids = load_embeddings(corpus, mmap=False)
        q, q_ids = load_embeddings(q_store, mmap=False)
        out[name] = (np.asarray(docs, np.float32), doc_ids, np.asarray(q, np.float32), q_ids)
    return out


def hf_minilm():
    from jdr.models.hf import find_minilm

    return find_minilm()


def build_and_search(r: dict, docs: np.ndarray, queries: np.ndarray, k: int):
    """-> (scores, rows, cost dict) for one row: the index built here, searched 1 + 3 times (best time kept)."""
    import faiss

    from jdr.index.faiss_index import build_index
    from jdr.index.quantized import QuantizedIndex

    docs, queries = truncate(docs, r["dims"]), truncate(queries, r["dims"])
    start = time.perf_counter()
    if "faiss" in r:
        index = build_index(docs, r["faiss"], seed=0)
        search = lambda: index.search(queries, k)  # noqa: E731
        cost = {"bytes": int(index.sa_code_size()), "rescore_bytes": 0}
    else:
        index = QuantizedIndex.build(docs, r["quantize"], keep="int8" if r.get("rescore") else None)
        search = lambda: index.search(queries, k, rescore=r.get("rescore", 0))  # noqa: E731
        per_doc = index.bytes_per_doc()
        cost = {"bytes": per_doc["search"], "rescore_bytes": per_doc["rescore"] if r.get("rescore") else 0}
    cost["build_s"] = time.perf_counter() - start
    scores, found = search()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        search()
        times.append(time.perf_counter() - t)
    cost["ms_per_query"] = 1000 * min(times) / len(queries)
    cost["faiss_threads"] = faiss.omp_get_max_threads()
    return scores, found, cost


def run_rows(args, root: Path, plan: list[dict], test) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    todo = [
        r
        for r in plan
        if not ((root / "runs" / f"{r['name']}.trec").is_file() and (root / "runs" / f"{r['name']}.json").is_file())
    ]
    if not todo:
        return
    emb = embeddings(args, root, test)
    for r in todo:
        docs, doc_ids, queries, qids = emb[r["model"]]
        scores, found, cost = build_and_search(r, docs, queries, args.top_k)
        run = {q: {doc_ids[j]: float(s) for s, j in zip(sc, rr) if j >= 0} for q, sc, rr in zip(qids, scores, found)}
        write_trec_run(root / "runs" / f"{r['name']}.trec", run, r["name"], digits=8)
        with atomic_write(root / "runs" / f"{r['name']}.json") as f:
            json.dump({**r, **cost}, f, indent=1)
        print(f"{r['name']}: {cost['bytes']} B/doc, {cost['ms_per_query']:.3f} ms/query", file=sys.stderr)


def stated_references() -> list[dict]:
    """Distill-VQ rows as the earlier benchmarks state them (no per-query runs were kept: no paired test)."""
    refs = []
    for file, keep in (
        ("distill_vq.json", "jdr Distill-VQ OPQ+PQ"),
        ("distill_vq_qe.json", "jdr Distill-VQ + query encoder OPQ+PQ"),
    ):
        path = REFERENCES / file
        if not path.is_file():
            continue
        for res in json.loads(path.read_text())["results"]:
            if res["method"] == keep and res.get("nprobe", "-") == "-":
                refs.append(
                    {
                        "label": f"{keep.removeprefix('jdr ')} ({file})",
                        "bytes": res["bytes"],
                        "ndcg@10": res["ndcg@10"],
                        "recall@100": res["r@100"],
                        "family": "Distill-VQ (stated)",
                    }
                )
    return refs


def summarize(args, root: Path, plan: list[dict], test) -> dict:
    per_row = {}
    for r in plan:
        run = read_trec_run(root / "runs" / f"{r['name']}.trec")
        pq = per_query_metrics(test.qrels, run, ignore_identical_ids=True, metrics=METRICS)
        qids = sorted(pq[METRICS[0]])
        per_row[r["name"]] = {m: np.array([pq[m][q] for q in qids]) for m in METRICS}
    cmp = compare_scores(per_row, baseline="float32", metrics=METRICS, resamples=args.resamples, seed=0)
    costs = {r["name"]: json.loads((root / "runs" / f"{r['name']}.json").read_text()) for r in plan}
    means = {name: {m: float(v[m].mean()) for m in METRICS} for name, v in per_row.items()}
    return {"comparison": cmp, "costs": costs, "means": means, "references": stated_references()}


def goals(res: dict) -> list[str]:
    means, costs = res["means"], res["costs"]
    base = means["float32"]["ndcg@10"]
    lines = []
    for m in (1, 4, 10):
        v = means[f"binary_rescore{m}"]["ndcg@10"]
        lines.append(
            f"binary + int8 rescore M={m}: NDCG@10 {v:.4f} = {v / base:.1%} of float32 (goal >= 95 %: "
            f"{'met' if v >= 0.95 * base else 'missed'})"
        )
    lines.append(
        f"binary alone: {means['binary']['ndcg@10'] / base:.1%} of float32; int8: {means['int8']['ndcg@10'] / base:.1%}"
    )
    at16 = {n: means[n]["ndcg@10"] for n, c in costs.items() if c["bytes"] <= 16}
    best = max(at16, key=at16.get)
    lines.append(
        f"best at <= 16 B/doc searched: {costs[best]['label']} NDCG@10 {at16[best]:.4f} (+ "
        f"{costs[best]['rescore_bytes']} B/doc read for rescoring); Distill-VQ stated 0.5875 (index only) / "
        f"0.5975 (+ query encoder): goal 'beats 0.59' {'met' if at16[best] > 0.59 else 'missed'}"
    )
    plain16 = {n: v for n, v in at16.items() if not costs[n]["rescore_bytes"]}
    if plain16:
        b = max(plain16, key=plain16.get)
        lines.append(f"best at <= 16 B with nothing else read: {costs[b]['label']} NDCG@10 {plain16[b]:.4f}")
    for who, name in (("released model", "dim64"), ("Matryoshka model", "mrl64")):
        if name in means:
            ref = means["mrl384" if name == "mrl64" else "float32"]["ndcg@10"]
            v = means[name]["ndcg@10"]
            lines.append(
                f"{who} at 64 dims: NDCG@10 {v:.4f} = {v / ref:.1%} of its own 384 dims (goal for the "
                f"Matryoshka model >= 95 %)"
            )
    if "mrl64" not in means:
        lines.append("Matryoshka-trained rows: not run here (`--matryoshka-workdir`, configs/scifact_matryoshka.py)")
    return lines


def plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    families: dict[str, list] = {}
    for name, c in res["costs"].items():
        families.setdefault(c["family"], []).append((c["bytes"], res["means"][name]["ndcg@10"]))
    for ref in res["references"]:
        families.setdefault(ref["family"], []).append((ref["bytes"], ref["ndcg@10"]))
    for fam, pts in families.items():
        pts.sort()
        style = "x" if "stated" in fam or "M=1, 4" in fam else "o-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=fam, markersize=5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per document searched (log scale; rescoring vectors read for candidates not counted)")
    ax.set_ylabel("NDCG@10 (SciFact test)")
    ax.axhline(res["means"]["float32"]["ndcg@10"] * 0.95, color="grey", lw=0.6, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("all-MiniLM-L6-v2 on SciFact: quality per byte (dashed: 95 % of float32)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def write(args, res: dict, argv: list[str]) -> str:
    load_note = "" if args.idle else " (under load: the 2-core machine was shared with other jobs)"
    costs = res["costs"]
    extra = {
        "bytes/doc": {n: str(c["bytes"]) for n, c in costs.items()},
        "+ rescore B/doc": {n: str(c["rescore_bytes"] or "") for n, c in costs.items()},
        "search ms/query" + ("" if args.idle else " (under load)"): {
            n: f"{c['ms_per_query']:.3f}" for n, c in costs.items()
        },
    }
    labels = {n: c["label"] for n, c in costs.items()}
    refs = [
        "| stated reference (no per-query runs: no paired test) | NDCG@10 | R@100 | bytes/doc |",
        "|---|---|---|---|",
    ]
    refs += [f"| {r['label']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['bytes']} |" for r in res["references"]]
    md = [
        "# Every byte budget in one table (SciFact test, 300 queries)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; faiss on 1 thread{load_note}. Command: "
        f"`python benchmarks/byte_budget.py {shlex.join(argv)}`. Corpus: all-MiniLM-L6-v2 embeddings of the 5 183 "
        f"SciFact documents at 256 tokens (a `jdr encode` store); queries encoded here. Top {args.top_k} per "
        f"query. bytes/doc = the codes searched per document (held in RAM); + rescore B/doc = int8 vectors read "
        f"only for the k*M candidates. Truncated rows keep the first k dims, re-normalised (`--dim k`).",
        "",
        format_markdown(res["comparison"], labels=labels, extra=extra),
        "",
        *refs,
        "",
        "Goals (issue 25):",
        "",
        *[f"- {g}" for g in goals(res)],
        "",
    ]
    text = "\n".join(md)
    with atomic_write(RESULTS / "byte_budget.md") as f:
        f.write(text)
    with atomic_write(RESULTS / "byte_budget.json") as f:
        json.dump(
            {
                "command": ["python", "benchmarks/byte_budget.py", *argv],
                "cpu": cpu_model(),
                "under_load": not args.idle,
                "rows": costs,
                "means": res["means"],
                "references": res["references"],
                "goals": goals(res),
                "comparison": res["comparison"].to_dict(),
            },
            f,
            indent=1,
        )
    plot(res, RESULTS / "byte_budget.png")
    return text


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CACHED_CORPUS, help="released-model corpus embedding store")
    p.add_argument("--data", default="scifact")
    p.add_argument("--root", type=Path, default=REPO / ".cache" / "byte_budget", help="runs and caches")
    p.add_argument("--matryoshka-workdir", default=None, help="a `jdr train` workdir (configs/scifact_matryoshka.py)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--idle", action="store_true", help="the machine ran nothing else: timings not marked")
    p.add_argument("--skip", default="", help="comma-separated row names left out of this run and its table")
    args = p.parse_args(argv)
    from jdr.data.beir import load_beir, resolve_dataset

    test = load_beir(resolve_dataset(args.data), "test")
    skip = {x for x in args.skip.split(",") if x}
    plan = [r for r in rows(384, bool(args.matryoshka_workdir)) if r["name"] not in skip]
    run_rows(args, args.root, plan, test)
    print(write(args, summarize(args, args.root, plan, test), argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
