"""The research log's question, measured: SciFact's memory plus a large augmentation memory in one ANN index —
how much boundary duplication does SPANN need to keep recall@10 >= 0.95 as the memory grows (0, 100 k, 1 M)?

Inputs: the MiniLM SciFact embeddings from `jdr encode` (corpus, passage tower; queries, query tower):
  jdr encode --model minilm --input ../shared/data/scifact/corpus.jsonl --output .cache/scifact_minilm/corpus \
      --tower passage
  jdr encode --model minilm --input ../shared/data/scifact/queries.jsonl --output .cache/scifact_minilm/queries \
      --tower query
The augmentation memory is drawn around the corpus embeddings' distribution: a Gaussian mixture fitted to them
(faiss spherical k-means components; each component a Gaussian with its members' mean and empirical covariance,
sampled as mean + Z @ centred_members / sqrt(n_c - 1), so no d x d matrix is formed; weights = member fractions;
samples L2-normalised like the encoder's outputs). For each memory size the index holds SciFact + the first
`size` augmentation vectors; ground truth is the exact top-10 (faiss Flat) of all 1 109 SciFact queries over it.
The list size is fixed (`--list-size`), so the number of lists grows with the memory, as it would in SPANN.
Per size: SPANN at a ladder of duplication settings (no duplication; closure + RNG at growing eps1; closure
alone), each swept over max_probe, and faiss IVF-Flat with the same number of lists swept over nprobe.
Reported: duplication factor, lists and vectors scanned per query to reach recall@10 >= target, and, at a fixed
budget of lists per query, the least duplication that reaches the target.

  python benchmarks/memory_size.py --corpus-emb .cache/scifact_minilm/corpus --query-emb .cache/scifact_minilm/queries
  python benchmarks/memory_size.py ... --sizes 0,20000 --out /tmp/memory_size_small   # development scale
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spann_common import (  # noqa: E402
    build_ivf,
    cpu_model,
    exact_topk,
    ivf_curve,
    scanned_for_recall,
    spann_curve,
    write_json,
    write_text,
)

from jdr.index.clustering import balanced_kmeans  # noqa: E402
from jdr.index.spann import build_spann, head_candidates  # noqa: E402
from jdr.index.store import load_embeddings  # noqa: E402
from jdr.run_info import run_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LADDER = [
    ("none", {"max_replicas": 1}),
    ("RNG eps1=0.05", {"eps1": 0.05, "max_replicas": 8}),
    ("RNG eps1=0.1", {"eps1": 0.1, "max_replicas": 8}),
    ("RNG eps1=0.2", {"eps1": 0.2, "max_replicas": 8}),
    ("RNG eps1=0.5", {"eps1": 0.5, "max_replicas": 8}),
    ("closure eps1=0.1 R=4", {"eps1": 0.1, "max_replicas": 4, "rng": False}),
    ("closure eps1=0.2 R=8", {"eps1": 0.2, "max_replicas": 8, "rng": False}),
]
PROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def fit_and_sample(emb: np.ndarray, n: int, *, components: int, seed: int) -> np.ndarray:
    """`n` unit vectors from a Gaussian mixture fitted to `emb[N, d]` (see the module docstring)."""
    d = emb.shape[1]
    km = faiss.Kmeans(d, components, niter=25, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(emb)
    labels = km.index.search(emb, 1)[1][:, 0]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.bincount(labels, minlength=components) / len(emb))
    out = np.empty((n, d), np.float32)
    pos = 0
    iso = float(np.sqrt(((emb - km.centroids[labels]) ** 2).sum(1).mean() / d))  # for one-member components
    for c in range(components):
        members = emb[labels == c]
        mean = members.mean(0)
        centred = members - mean
        for s in range(0, counts[c], 50_000):
            m = min(50_000, counts[c] - s)
            if len(members) > 1:
                z = rng.standard_normal((m, len(members)), dtype=np.float32)
                out[pos : pos + m] = mean + z @ centred / np.sqrt(len(members) - 1)
            else:
                out[pos : pos + m] = mean + iso * rng.standard_normal((m, d), dtype=np.float32)
            pos += m
    out = out[rng.permutation(n)]
    faiss.normalize_L2(out)
    return out


def measure(x: np.ndarray, q: np.ndarray, args, tmp: Path, log) -> dict:
    gt = exact_topk(x, q, 10)
    t = time.perf_counter()
    heads, _ = balanced_kmeans(x, args.list_size, member_heads=args.heads == "member", seed=0)
    cands = head_candidates(x, heads, 64, "ip")
    res = {"n": len(x), "lists": len(heads), "heads_seconds": time.perf_counter() - t, "spann": []}
    for label, kw in LADDER:
        index = build_spann(x, tmp / "index", list_size=args.list_size, heads=heads, head_cands=cands, **kw)
        curve = spann_curve(index, q, gt, probes=[p for p in PROBES if p <= len(heads)])
        res["spann"].append(
            {
                "label": label,
                "params": index.meta["params"],
                "duplication": index.meta["stats"]["duplication"],
                "memory": index.memory_bytes(),
                "curve": curve,
                **_need(curve, args.target),
            }
        )
        log(
            f"n={len(x)} {label}: dup {index.meta['stats']['duplication']:.2f}, lists for {args.target}: "
            f"{res['spann'][-1]['lists_needed']}, scanned {res['spann'][-1]['scanned_needed']}"
        )
        del index
        shutil.rmtree(tmp / "index")
    ivf, ivf_s = build_ivf(x, len(heads), train_per_list=args.ivf_train_per_list)
    curve = ivf_curve(ivf, q, gt, probes=[p for p in PROBES if p <= len(heads)])
    res["ivf"] = {"nlist": len(heads), "build_seconds": ivf_s, "curve": curve, **_need(curve, args.target)}
    log(
        f"n={len(x)} IVF{len(heads)}: lists for {args.target}: {res['ivf']['lists_needed']}, "
        f"scanned {res['ivf']['scanned_needed']}"
    )
    return res


def _need(curve: list[dict], target: float) -> dict:
    """Fewest lists probed (a measured point) and interpolated vectors scanned reaching `target` recall."""
    ok = [p for p in curve if p["recall"] >= target]
    return {
        "lists_needed": min((p["lists"] for p in ok), default=None),
        "scanned_needed": scanned_for_recall(curve, target),
    }


def markdown(res: dict) -> str:
    a, tgt = res["args"], res["args"]["target"]
    lines = [
        f"# Memory size vs duplication: SciFact + augmentation memory, recall@10 >= {tgt}",
        "",
        f"CPU: {res['cpu']}; {res['load_note']}; total {res['seconds']:.0f}s. {res['queries']} SciFact queries; "
        f"list size bound {a['list_size']} ({a['heads']} heads); augmentation = Gaussian mixture "
        f"({a['components']} components) fitted to the {res['corpus']} MiniLM corpus embeddings.",
        "",
        "Lists probed / vectors scanned per query to reach the target ('—': not reached by 256 lists):",
        "",
        "| memory (aug + SciFact) | lists | " + " | ".join(f"{lab}" for lab, _ in LADDER) + " | faiss IVF |",
        "|---|---|" + "---|" * (len(LADDER) + 1),
    ]
    for r in res["sizes"]:
        cells = [
            f"dup {s['duplication']:.2f}: "
            + (f"{s['lists_needed']:.0f} / {s['scanned_needed']:,.0f}" if s["lists_needed"] is not None else "—")
            for s in r["spann"]
        ]
        iv = r["ivf"]
        cells.append(f"{iv['lists_needed']:.0f} / {iv['scanned_needed']:,.0f}" if iv["lists_needed"] else "—")
        lines.append(f"| {r['aug']:,} + {res['corpus']:,} | {r['lists']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Least duplication reaching the target within a budget of lists per query (SPANN ladder above; "
        "IVF: reached or not):",
        "",
        "| memory | " + " | ".join(f"<= {b} lists" for b in a["budgets"]) + " |",
        "|---|" + "---|" * len(a["budgets"]),
    ]
    for r in res["sizes"]:
        cells = []
        for b in a["budgets"]:
            ok = [s for s in r["spann"] if s["lists_needed"] is not None and s["lists_needed"] <= b]
            best = min(ok, key=lambda s: s["duplication"], default=None)
            ivf_ok = r["ivf"]["lists_needed"] is not None and r["ivf"]["lists_needed"] <= b
            cells.append(
                ("—" if best is None else f"{best['duplication']:.2f} ({best['label']})")
                + f"; IVF {'yes' if ivf_ok else 'no'}"
            )
        lines.append(f"| {r['aug']:,} + {res['corpus']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus-emb", required=True, help="`jdr encode` store of the SciFact corpus")
    p.add_argument("--query-emb", required=True, help="`jdr encode` store of the SciFact queries")
    p.add_argument("--sizes", default="0,100000,1000000", help="augmentation memory sizes")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--list-size", type=int, default=512, help="balanced k-means bound (fixed across sizes)")
    p.add_argument("--heads", choices=("centroid", "member"), default="member")
    p.add_argument("--components", type=int, default=64, help="mixture components fitted to the corpus")
    p.add_argument("--budgets", default="4,8,16,32,64", help="lists-per-query budgets for the summary table")
    p.add_argument("--ivf-train-per-list", type=int, default=32, help="faiss IVF k-means sample per list")
    p.add_argument("--tmp", default=None, help="where posting lists are written (default: system temp dir)")
    p.add_argument("--out", default=str(RESULTS / "memory_size"), help="results stem (.json, .md)")
    p.add_argument("--load-note", default="machine state not recorded")
    args = p.parse_args(argv)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()

    def log(msg):
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", flush=True)

    corpus, _ = load_embeddings(args.corpus_emb, mmap=False)
    queries, _ = load_embeddings(args.query_emb, mmap=False)
    corpus, queries = (np.ascontiguousarray(a, np.float32) for a in (corpus, queries))
    union = np.empty((len(corpus) + max(sizes), corpus.shape[1]), np.float32)  # each size is a prefix
    union[: len(corpus)] = corpus
    union[len(corpus) :] = fit_and_sample(corpus, max(sizes), components=args.components, seed=0)
    log(f"augmentation memory of {max(sizes):,} sampled")
    res = {
        "args": vars(args),
        "cpu": cpu_model(),
        "load_note": args.load_note,
        "corpus": len(corpus),
        "queries": len(queries),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="memory_size.") as tmp:
        for size in sizes:
            r = measure(union[: len(corpus) + size], queries, args, Path(tmp), log)
            res["sizes"].append({"aug": size, **r})
    res["seconds"] = time.perf_counter() - t0
    res["run"] = run_record(vars(args), seed=0)
    stem = Path(args.out)
    write_json(stem.with_suffix(".json"), res)
    write_text(stem.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
