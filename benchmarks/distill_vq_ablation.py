"""Distill-VQ dev-set ablation (`python benchmarks/distill_vq.py --ablation ...`): what the paper's ablation says
matters, tried one factor at a time around the config, chosen on dev, test read once.

Dev = `--dev-queries` (default: the config's `data.dev_queries`, else 100) of the train split's queries, held out
by `jdr.data.split.split_dev` (seeded, as `jdr train`); Distill-VQ trains on the rest and is scored on the dev
queries' train qrels (NDCG@10, then dense-R@10 to break ties). Factors (variants equal to the config's own value
are skipped):
  candidates  train.topk 25 / 100 / 200, and no in-batch candidates (the list is the teacher's top-k only);
  loss        kl_distill instead of ListNet;
  temperature train.loss_temperature 0.02 / 0.1 / 0.2 (score softmax), train.tau 0.05 / 0.2 (soft assignment);
  joint IVF   (IVF methods) train.ivf_weight 0: no coarse-score term, the centroids learn only through the
              fine score; 2: the coarse term weighted up.
Choice, per code size and method: for each factor its best setting on dev; the winners that beat the config on
dev are combined, and the combination is scored on dev as well; the best of config / single variants /
combination by dev NDCG@10 is "dev-chosen". Then, once: faiss, Distill-VQ with the config and with the dev-chosen
overrides, both trained on ALL train queries (as the main benchmark), on the test queries, with the paired tests
of `distill_vq.add_significance` (each against its faiss start) and dev-chosen against the config.

Cost: one distillation per variant (about 10 per method at 16 B; one at 16 B, 300 steps of 16 x 50 candidates,
took ~1-2 min on the shared 2-core CPU, topk 200 about 4x that, 48 B about 3x) plus the faiss indexes (cached
with --cache).
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
from distill_vq import add_significance, evaluate_row, trained_faiss_index  # the main benchmark's helpers

from jdr.compare import MARK, adjust_pvalues, paired_test
from jdr.config import apply_overrides
from jdr.index.faiss_index import build_index, search
from jdr.vq.export import export_faiss
from jdr.vq.init import read_faiss
from jdr.vq.layer import VQSpec
from jdr.vq.train import train_distill_vq

FACTORS = {  # factor -> {variant name: overrides}
    "candidates": {
        "topk=25": ["train.topk=25"],
        "topk=100": ["train.topk=100"],
        "topk=200": ["train.topk=200"],
        "no in-batch": ["train.in_batch=False"],
    },
    "loss": {"KL": ["train.loss=kl_distill"]},
    "loss_temperature": {
        "T=0.02": ["train.loss_temperature=0.02"],
        "T=0.1": ["train.loss_temperature=0.1"],
        "T=0.2": ["train.loss_temperature=0.2"],
    },
    "tau": {"tau=0.05": ["train.tau=0.05"], "tau=0.2": ["train.tau=0.2"]},
    "ivf_weight": {"ivf_weight=0": ["train.ivf_weight=0.0"], "ivf_weight=2": ["train.ivf_weight=2.0"]},
}


def _configured(cfg, overrides, b: int, spec: VQSpec, n_train: int):
    c = copy.deepcopy(cfg)
    apply_overrides(c, overrides)
    c.vq.M, c.vq.nlist, c.vq.opq = b, spec.nlist, True
    c.train.batch_size = min(c.train.batch_size, n_train)
    return c


def _is_noop(cfg, overrides) -> bool:
    c = copy.deepcopy(cfg)
    apply_overrides(c, overrides)
    return c.to_json() == cfg.to_json()


def _distill(docs, train_q, cfg, overrides, b, spec, index):
    c = _configured(cfg, overrides, b, spec, len(train_q))
    t0 = time.time()
    vq = train_distill_vq(docs, train_q, c, init=read_faiss(index, spec, docs)).vq
    return export_faiss(vq, docs), time.time() - t0


def run_ablation(
    docs,
    doc_ids,
    train_q,
    dev_q,
    dev_ids,
    dev_qrels,
    all_train_q,
    test_q,
    test_ids,
    test_qrels,
    *,
    code_bytes,
    nlist,
    nprobes,
    cfg,
    cache=None,
    methods=("OPQ+PQ", "OPQ+IVFPQ"),
    test=True,
) -> dict:
    """The ablation (module docstring) -> {"dev": rows, "chosen": {(bytes, method): overrides}, "test": rows}.
    `train_q` = train queries minus dev (ablation), `all_train_q` = every train query (the final test rows)."""
    d = docs.shape[1]
    dense_dev = search(build_index(docs, "Flat"), dev_q, 100)[1]
    dev_rows, chosen = [], {}
    for b in code_bytes:
        for method in methods:
            nl = nlist if "IVF" in method else 0
            spec = VQSpec(d=d, M=b, K=256, nlist=nl, opq=True)
            index, faiss_s = trained_faiss_index(docs, spec.factory(), cfg.seed, cache)
            probe = min(nprobes[0], nl) if nl else 0

            def score(ix, name, overrides, train_s, factor):
                row = evaluate_row(ix, name, nl, probe, dev_q, dev_ids, doc_ids, dev_qrels, dense_dev, train_s)[0]
                row |= {"bytes": b, "structure": method, "factor": factor, "overrides": list(overrides)}
                dev_rows.append(row)
                print(
                    f"dev {b} B {method} {name}: NDCG@10 {row['ndcg@10']:.4f} dense-R@10 {row['dense_r@10']:.4f} "
                    f"({train_s:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                return row

            score(index, f"faiss {method}", [], faiss_s, "faiss")
            base = score(*_distill_named(docs, train_q, cfg, [], b, spec, index, "config"), "config")
            winners = []
            for factor, variants in FACTORS.items():
                if factor == "ivf_weight" and not nl:
                    continue
                rows = [
                    score(*_distill_named(docs, train_q, cfg, o, b, spec, index, name), factor)
                    for name, o in variants.items()
                    if not _is_noop(cfg, o)
                ]
                best = max(rows, key=_key, default=None)
                if best is not None and _key(best) > _key(base):
                    winners.append(best["overrides"])
            candidates = [
                r for r in dev_rows if r["bytes"] == b and r["structure"] == method and r["factor"] != "faiss"
            ]
            if len(winners) > 1:
                combined = [o for w in winners for o in w]
                candidates.append(
                    score(*_distill_named(docs, train_q, cfg, combined, b, spec, index, "combined winners"), "combined")
                )
            chosen[(b, method)] = max(candidates, key=_key)["overrides"]
    out = {"dev": dev_rows, "chosen": [{"bytes": b, "method": m, "overrides": o} for (b, m), o in chosen.items()]}
    if test:
        out["test"] = _test_rows(
            docs, doc_ids, all_train_q, test_q, test_ids, test_qrels, chosen, nlist, nprobes, cfg, cache
        )
    return out


def _distill_named(docs, train_q, cfg, overrides, b, spec, index, name):
    ix, train_s = _distill(docs, train_q, cfg, overrides, b, spec, index)
    return ix, f"Distill-VQ {name}", overrides, train_s


def _key(row):
    return row["ndcg@10"], row["dense_r@10"]


def _test_rows(docs, doc_ids, train_q, test_q, test_ids, qrels, chosen, nlist, nprobes, cfg, cache):
    """faiss / Distill-VQ (config) / Distill-VQ (dev-chosen) on test, trained on all train queries; paired tests
    against faiss (add_significance) and dev-chosen against the config (`vs config`), Holm-corrected."""
    dense = search(build_index(docs, "Flat"), test_q, 100)[1]
    rows, per_query = [], []
    for (b, method), overrides in chosen.items():
        nl = nlist if "IVF" in method else 0
        spec = VQSpec(d=docs.shape[1], M=b, K=256, nlist=nl, opq=True)
        index, faiss_s = trained_faiss_index(docs, spec.factory(), cfg.seed, cache)
        entries = [(index, f"faiss {method}", faiss_s, [])]
        for label, o in (("", []), (" (dev-chosen)", overrides)):
            if label and not o:
                continue  # the config itself was chosen
            ix, s = _distill(docs, train_q, cfg, o, b, spec, index)
            entries.append((ix, f"jdr Distill-VQ{label} {method}", faiss_s + s, o))
        for ix, name, train_s, o in entries:
            for probe in sorted({min(p, nl) for p in nprobes}) if nl else [0]:
                row, values = evaluate_row(ix, name, nl, probe, test_q, test_ids, doc_ids, qrels, dense, train_s)
                rows.append(row | {"bytes": b, "overrides": o})
                per_query.append(values)
    add_significance(rows, per_query)
    where = {(r["bytes"], r["method"], r["nprobe"]): i for i, r in enumerate(rows)}
    family = []
    for i, r in enumerate(rows):
        if "(dev-chosen)" in r["method"]:
            j = where[(r["bytes"], r["method"].replace(" (dev-chosen)", ""), r["nprobe"])]
            test = paired_test(per_query[i]["ndcg@10"], per_query[j]["ndcg@10"])
            r["vs config"] = test
            family.append(test)
    for test, p_adj in zip(family, adjust_pvalues([t["p_permutation"] for t in family], "holm")):
        test["p_adjusted"], test["significant"] = float(p_adj), bool(p_adj < 0.05)
    for r in rows:
        if "vs config" in r:
            t = r["vs config"]
            r["vs config (NDCG@10)"] = (
                f"{t['diff']:+.3f} [{t['diff_ci'][0]:+.3f}, {t['diff_ci'][1]:+.3f}] "
                f"p {t['p_adjusted']:.3g}" + (MARK if t["significant"] else "")
            )
    return rows


def random_dev_split(train_q: np.ndarray, docs: np.ndarray, n_dev: int):
    """For `--random`: the last `n_dev` training queries as dev, judged by their dense top-3 (as the test ones)."""
    dev_q, rest = train_q[-n_dev:], train_q[:-n_dev]
    dev_ids = [f"dev{i}" for i in range(n_dev)]
    top = search(build_index(docs, "Flat"), dev_q, 3)[1]
    return rest, dev_q, dev_ids, {q: {f"d{r}": 1 for r in rows} for q, rows in zip(dev_ids, top)}


def format_ablation(out: dict) -> str:
    """Markdown: the dev table (one row per variant) and the chosen overrides; the test table is distill_vq's."""
    cols = ["bytes", "structure", "factor", "method", "ndcg@10", "dense_r@10", "r@100", "train_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in out["dev"]:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    lines.append("")
    lines += [
        f"- {c['bytes']} B {c['method']}: dev-chosen overrides {c['overrides'] or '(the config)'}"
        for c in out["chosen"]
    ]
    return "\n".join(lines)
