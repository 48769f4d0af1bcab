"""SPANN's boundary duplication simulated: 1 000 000 vectors, d = 384, recall@10 against vectors scanned per query.

Two data sets of unit vectors (jdr retrieves by inner product on normalised embeddings), each with 1 000 held-out
queries drawn the same way and their exact top-10 from faiss Flat:
  mixture  a clustered Gaussian mixture: 100 topic directions, 10 sub-topics each, per-component spread, Zipf-like
           component weights (the realistic case);
  sphere   uniform on the sphere (the worst case: distances concentrate, every vector is a boundary vector).
For each, one set of SPANN heads per head-vector kind (balanced hierarchical k-means: leaf means, or the data
vector nearest each) and one candidate search are shared by the duplication settings (eps1 / max_replicas / RNG
rule; duplication factor = posting entries / N); each setting is swept over max_probe (and eps2 at max_probe 64).
The peer is faiss IVF-Flat with the same number of lists, swept over nprobe; both are searched on one thread.
Reported: recall@10 against vectors scanned per query, bytes in RAM (heads) and on "disk" (posting lists), build
time, ms per query; the answer to "how much recall does duplication buy at equal vectors scanned, and what does it
cost in storage" is the table at fixed scan budgets.

  python benchmarks/spann_sim.py                        # full: 1 M vectors (~20 min on 2 idle cores)
  python benchmarks/spann_sim.py --scale small          # 50 k vectors, a couple of minutes
Writes benchmarks/results/spann_sim{,_small}.{json,md,png} (matplotlib: benchmarks/requirements-bench.txt).
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
    recall_at_scanned,
    scanned_for_recall,
    spann_curve,
    write_json,
    write_text,
)

from jdr.index.clustering import balanced_kmeans  # noqa: E402
from jdr.index.spann import build_spann, head_candidates  # noqa: E402
from jdr.run_info import run_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (label, head vectors, build kwargs) per data set. Centroid heads are the leaf means; member heads the data vector
# nearest each (SPTAG's choice). With centroid heads the RNG rule rejects nearly every replica on clustered data
# (a centroid is nearer its sibling centroids than any member is), hence both kinds.
SETTINGS = {
    "mixture": [
        ("centroid heads, no duplication", "centroid", {"max_replicas": 1}),
        ("centroid heads, closure+RNG eps1=0.1", "centroid", {"eps1": 0.1, "max_replicas": 8}),
        ("centroid heads, closure eps1=0.1 R=4 (no RNG)", "centroid", {"eps1": 0.1, "max_replicas": 4, "rng": False}),
        ("member heads, no duplication", "member", {"max_replicas": 1}),
        ("member heads, closure+RNG eps1=0.1", "member", {"eps1": 0.1, "max_replicas": 8}),
        ("member heads, closure+RNG eps1=0.5 R=4", "member", {"eps1": 0.5, "max_replicas": 4}),
    ],
    # every vector is a boundary vector: any eps1 admits all candidates, so max_replicas sets the duplication
    "sphere": [
        ("centroid heads, no duplication", "centroid", {"max_replicas": 1}),
        ("centroid heads, closure eps1=0.1 R=2 (no RNG)", "centroid", {"eps1": 0.1, "max_replicas": 2, "rng": False}),
        ("member heads, no duplication", "member", {"max_replicas": 1}),
        ("member heads, closure+RNG eps1=0.1 R=2", "member", {"eps1": 0.1, "max_replicas": 2}),
        ("member heads, closure+RNG eps1=0.1 R=4", "member", {"eps1": 0.1, "max_replicas": 4}),
    ],
}


def _unit(x: np.ndarray) -> np.ndarray:
    faiss.normalize_L2(x)
    return x


def make_data(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    """`n` unit vectors of the `kind` distribution; generation is chunked and seeded (same seed, same rows)."""
    rng = np.random.default_rng(seed)
    if kind == "sphere":
        return _unit(rng.standard_normal((n, d), dtype=np.float32))
    crng = np.random.default_rng(1234)  # the mixture's components are fixed; `seed` draws points from them
    topics = _unit(crng.standard_normal((100, d), dtype=np.float32))
    comps = _unit(np.repeat(topics, 10, axis=0) + 0.7 * _unit(crng.standard_normal((1000, d), dtype=np.float32)))
    weights = 1.0 / np.arange(1, 1001) ** 0.5
    crng.shuffle(weights)
    spread = crng.uniform(1.0, 2.0, 1000).astype(np.float32)
    which = rng.choice(1000, size=n, p=weights / weights.sum())
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        w = which[s : s + 100_000]
        noise = rng.standard_normal((len(w), d), dtype=np.float32) / np.sqrt(d)
        x[s : s + len(w)] = comps[w] + spread[w, None] * noise
    return _unit(x)


def _point_name(p: dict) -> str:
    return f"P{p['max_probe']}" + ("" if p["eps2"] is None else f"/eps2={p['eps2']}")


def run_dataset(kind: str, args, tmp: Path, log) -> dict:
    t0 = time.perf_counter()
    x = make_data(kind, args.n, args.d, seed=0)
    q = make_data(kind, args.queries, args.d, seed=1)
    gt = exact_topk(x, q, 10)
    log(f"[{kind}] data + exact top-10: {time.perf_counter() - t0:.1f}s")
    out = {"spann": [], "heads": {}}
    shared = {}
    for label, kind_heads, kw in SETTINGS[kind]:
        if kind_heads not in shared:
            t = time.perf_counter()
            heads, labels = balanced_kmeans(x, args.list_size, member_heads=kind_heads == "member", seed=0)
            t_heads = time.perf_counter() - t
            t = time.perf_counter()
            cands = head_candidates(x, heads, 64, "ip")
            t_cands = time.perf_counter() - t
            sizes = np.bincount(labels)
            shared[kind_heads] = heads, cands, t_heads + t_cands
            out["heads"][kind_heads] = {
                "count": len(heads),
                "heads_seconds": t_heads,
                "candidates_seconds": t_cands,
                "cluster_size_max": int(sizes.max()),
                "cluster_size_mean": float(sizes.mean()),
            }
            log(
                f"[{kind}] {len(heads)} {kind_heads} heads in {t_heads:.1f}s (cluster sizes max {sizes.max()} "
                f"mean {sizes.mean():.0f}); candidates {t_cands:.1f}s"
            )
        heads, cands, t_shared = shared[kind_heads]
        t = time.perf_counter()
        index = build_spann(
            x,
            tmp / "index",
            list_size=args.list_size,
            heads=heads,
            head_cands=cands,
            member_heads=kind_heads == "member",
            **kw,
        )
        build_s = time.perf_counter() - t + t_shared
        eps2s = (0.05, 0.1, 0.2) if "RNG eps1=0.1" in label and kind_heads == "member" else ()
        curve = spann_curve(index, q, gt, eps2s=eps2s)
        st = index.meta["stats"]
        out["spann"].append(
            {
                "label": label,
                "head_vectors": kind_heads,
                "params": index.meta["params"],
                "duplication": st["duplication"],
                "list_size_max": st["list_size_max"],
                "list_size_mean": st["list_size_mean"],
                "memory": index.memory_bytes(),
                "build_seconds": build_s,
                "curve": curve,
            }
        )
        log(
            f"[{kind}] {label}: duplication {st['duplication']:.2f}, build {build_s:.1f}s, "
            + ", ".join(f"{_point_name(p)} {p['recall']:.3f}@{p['scanned']:.0f}" for p in curve)
        )
        del index
        shutil.rmtree(tmp / "index")
    nlist = out["heads"]["centroid"]["count"]
    ivf, ivf_s = build_ivf(x, nlist)
    out["ivf"] = {
        "nlist": nlist,
        "build_seconds": ivf_s,
        "curve": ivf_curve(ivf, q, gt),
        "memory": {"ram": int(x.nbytes + 8 * len(x) + ivf.quantizer.ntotal * args.d * 4), "disk": 0},
    }
    log(
        f"[{kind}] IVF{nlist},Flat build {ivf_s:.1f}s: "
        + ", ".join(f"np{p['nprobe']} {p['recall']:.3f}@{p['scanned']:.0f}" for p in out["ivf"]["curve"])
    )
    out["seconds"] = time.perf_counter() - t0
    return out


def budgets(n: int) -> list[int]:
    return [b for b in (int(n * f) for f in (0.002, 0.005, 0.01, 0.02, 0.05)) if b > 0]


def _table(rows: list[tuple], cols: list, at) -> list[str]:
    """Markdown rows: label, duplication, RAM/disk MB, build s, `at(curve, c)` per column, scanned for 0.9."""
    out = []
    for label, dup, mem, bs, curve in rows:
        curve = [p for p in curve if p.get("eps2") is None]
        need = scanned_for_recall(curve, 0.9)
        ms = min(
            (p["ms_per_query"] for p in curve if need and p["scanned"] >= need and p["recall"] >= 0.9), default=None
        )
        vals = [at(curve, c) for c in cols]
        out.append(
            f"| {label} | {dup:.2f} | {mem['ram'] / 2**20:.1f} | {mem['disk'] / 2**20:.0f} | {bs:.0f} | "
            + " | ".join("—" if v is None else f"{v:.3f}" for v in vals)
            + f" | {'—' if need is None else f'{need:,.0f}'} | {'—' if ms is None else f'{ms:.2f}'} |"
        )
    return out


def _at_lists(curve: list[dict], lists: int) -> float | None:
    return next((p["recall"] for p in curve if p.get("eps2") is None and p["lists"] == lists), None)


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        f"# SPANN simulation: {a['n']:,} vectors, d={a['d']}, {a['queries']} queries, recall@10",
        "",
        f"CPU: {res['cpu']}; {res['load_note']}; total {res['seconds']:.0f}s. Heads: balanced hierarchical "
        f"k-means, list_size {a['list_size']}. Searches on one thread. 'scanned' = posting entries read "
        "(SPANN) / distances computed (faiss IVF) per query. RAM: SPANN heads (+ their faiss copy); IVF-Flat "
        "holds every vector in RAM. 'ms/q there': ms per query (batch of all queries / count) at the first "
        "measured point with R@10 >= 0.9.",
        "",
    ]
    head = "| index | duplication | RAM MB | disk MB | build s | "
    for kind, r in res["datasets"].items():
        rows = [(s["label"], s["duplication"], s["memory"], s["build_seconds"], s["curve"]) for s in r["spann"]]
        rows.append(
            (
                f"faiss IVF{r['ivf']['nlist']},Flat",
                1.0,
                r["ivf"]["memory"],
                r["ivf"]["build_seconds"],
                r["ivf"]["curve"],
            )
        )
        heads = ", ".join(f"{h['count']} {k} heads" for k, h in r["heads"].items())
        b = budgets(a["n"])
        lines += [
            f"## {kind} ({heads}; IVF nlist = the centroid head count)",
            "",
            "Recall@10 at equal vectors scanned per query (interpolated, log scale):",
            "",
            head + " | ".join(f"@ {v:,}" for v in b) + " | scanned for R@10=0.9 | ms/q there |",
            "|---|---|---|---|---|" + "---|" * len(b) + "---|---|",
        ]
        lines += _table(rows, b, recall_at_scanned)
        lists = [1, 2, 4, 8, 16, 32, 64]
        lines += [
            "",
            "Recall@10 at equal lists read per query (SPANN's cost unit: one disk read per list):",
            "",
            head + " | ".join(f"{v} lists" for v in lists) + " | scanned for R@10=0.9 | ms/q there |",
            "|---|---|---|---|---|" + "---|" * len(lists) + "---|---|",
        ]
        lines += _table(rows, lists, _at_lists)
        lines += [
            "",
            "What duplication buys and costs, against no duplication with the same heads (ΔR@10 > 0: "
            "duplication wins):",
            "",
            "| index | duplication | extra disk MB | "
            + " | ".join(f"ΔR@10 @ {v:,} scanned" for v in b[1:4])
            + " | ΔR@10 @ 2 lists | ΔR@10 @ 8 lists |",
            "|---|---|---|" + "---|" * 5,
        ]
        for s in r["spann"]:
            base = next(
                o
                for o in r["spann"]
                if o["head_vectors"] == s["head_vectors"]
                and o["duplication"] == 1.0
                and o["params"]["max_replicas"] == 1
            )
            if s is base:
                continue
            cur, ref = ([p for p in c["curve"] if p.get("eps2") is None] for c in (s, base))
            deltas = [(recall_at_scanned(cur, v), recall_at_scanned(ref, v)) for v in b[1:4]]
            deltas += [(_at_lists(cur, v), _at_lists(ref, v)) for v in (2, 8)]
            lines.append(
                f"| {s['label']} | {s['duplication']:.2f} | "
                f"{(s['memory']['disk'] - base['memory']['disk']) / 2**20:,.0f} | "
                + " | ".join("—" if u is None or v is None else f"{u - v:+.3f}" for u, v in deltas)
                + " |"
            )
        pruned = [(s["label"], p) for s in r["spann"] for p in s["curve"] if p.get("eps2") is not None]
        if pruned:
            lines += [
                "",
                "Query-aware pruning (max_probe 64):",
                "",
                "| index | eps2 | lists | scanned | R@10 |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {lab} | {p['eps2']} | {p['lists']:.1f} | {p['scanned']:,.0f} | {p['recall']:.3f} |"
                for lab, p in pruned
            ]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(res["datasets"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        r = res["datasets"][kind]
        for s in r["spann"]:
            pts = sorted((p["scanned"], p["recall"]) for p in s["curve"] if p["eps2"] is None)
            ax.plot(
                *zip(*pts),
                marker="o",
                ms=3,
                ls="-" if s["head_vectors"] == "centroid" else ":",
                label=f"SPANN {s['label']} (dup {s['duplication']:.2f})",
            )
        pts = sorted((p["scanned"], p["recall"]) for p in r["ivf"]["curve"])
        ax.plot(*zip(*pts), "k--", marker="s", ms=3, label=f"faiss IVF{r['ivf']['nlist']},Flat")
        ax.set_xscale("log")
        ax.set_xlabel("vectors scanned per query")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{kind}: {res['args']['n']:,} x {res['args']['d']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("full", "small"), default="full", help="full: 1 M vectors; small: 50 k")
    p.add_argument("--n", type=int, default=None, help="vectors (overrides --scale)")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--list-size", type=int, default=None, help="balanced k-means bound (default: N / 1000)")
    p.add_argument("--datasets", default="mixture,sphere")
    p.add_argument("--tmp", default=None, help="where posting lists are written (default: system temp dir)")
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/spann_sim[_small])")
    p.add_argument("--load-note", default="machine state not recorded", help="e.g. 'idle' or 'under load'")
    args = p.parse_args(argv)
    args.n = args.n or (1_000_000 if args.scale == "full" else 50_000)
    args.list_size = args.list_size or max(20, args.n // 1000)
    stem = (
        Path(args.out)
        if args.out
        else RESULTS / ("spann_sim" if args.scale == "full" and args.n == 1_000_000 else f"spann_sim_{args.n // 1000}k")
    )
    t0 = time.perf_counter()

    def log(msg):
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", flush=True)

    res = {"args": vars(args), "cpu": cpu_model(), "load_note": args.load_note, "datasets": {}}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="spann_sim.") as tmp:
        for kind in args.datasets.split(","):
            res["datasets"][kind] = run_dataset(kind, args, Path(tmp), log)
    res["seconds"] = time.perf_counter() - t0
    res["run"] = run_record(vars(args), seed=0)
    write_json(stem.with_suffix(".json"), res)
    write_text(stem.with_suffix(".md"), markdown(res))
    plot(res, stem.with_suffix(".png"))
    log(f"wrote {stem}.json/.md/.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
