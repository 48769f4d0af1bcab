"""benchmarks/distill_vq.py's significance against faiss and the dev ablation's choice (distill_vq_ablation.py),
with the distillation and the index scoring replaced by fakes so only the bookkeeping runs (seconds)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import distill_vq  # noqa: E402
import distill_vq_ablation  # noqa: E402


def _row(b, method, nprobe="-"):
    return {"bytes": b, "method": method, "nprobe": nprobe, "ndcg@10": 0.5}


def test_each_distill_vq_row_is_tested_against_its_faiss_start():
    n = 12
    better, same = np.ones(n), np.full(n, 0.5)
    rows = [
        _row(16, "faiss OPQ+PQ"),
        _row(16, "faiss OPQ+IVFPQ", 16),
        _row(16, "faiss OPQ+IVFPQ", 64),
        _row(16, "jdr Distill-VQ OPQ+PQ"),
        _row(16, "jdr Distill-VQ OPQ+IVFPQ", 64),
        _row(16, "jdr Distill-VQ + query encoder OPQ+PQ"),
    ]
    values = [same, same, 0.25 * np.ones(n), better, same, better]
    per_query = [{"ndcg@10": v, "recall@100": v} for v in values]
    distill_vq.add_significance(rows, per_query)
    pq, ivf, qe = rows[3]["significance"], rows[4]["significance"], rows[5]["significance"]
    assert pq["baseline"] == "faiss OPQ+PQ" and qe["baseline"] == "faiss OPQ+PQ"
    assert ivf["ndcg@10"]["diff"] == pytest.approx(0.25)  # paired with the nprobe-64 faiss row, not nprobe 16
    # 12 all-positive differences: p = 2 / 2^12 exactly; Holm over 6 comparisons (3 rows x 2 metrics): x6
    assert pq["ndcg@10"]["p_permutation"] == pytest.approx(2 / 4096)
    assert pq["ndcg@10"]["p_adjusted"] == pytest.approx(6 * 2 / 4096) and pq["ndcg@10"]["significant"]
    assert rows[3]["vs faiss (NDCG@10)"].startswith("+0.500 [+0.500, +0.500] p 0.00293") and rows[3][
        "vs faiss (NDCG@10)"
    ].endswith("†")
    assert "significance" not in rows[0]
    assert "| jdr Distill-VQ OPQ+PQ |" in distill_vq.format_table(
        [
            r | {"dense_r@10": 0.0, "dense_r@100": 0.0, "r@100": 0.0, "train_s": 0.0, "ndcg@10 95% CI": "[0, 1]"}
            for r in rows
        ]
    )


@pytest.mark.parametrize(
    "combined_ndcg, chosen", [(0.60, ["train.topk=100", "train.loss=kl_distill"]), (0.51, ["train.topk=100"])]
)
def test_ablation_chooses_on_dev(monkeypatch, combined_ndcg, chosen):
    dev_ndcg = {
        (): 0.50,
        ("train.topk=100",): 0.55,
        ("train.loss=kl_distill",): 0.52,
        ("train.loss_temperature=0.1",): 0.49,
        ("train.topk=100", "train.loss=kl_distill"): combined_ndcg,
    }
    trained = []

    def fake_distill(docs, train_q, cfg, overrides, b, spec, index):
        trained.append(tuple(overrides))
        return tuple(overrides), 1.0  # the "index" is its overrides, scored below

    def fake_evaluate(ix, name, nl, probe, q, ids, doc_ids, qrels, dense, train_s):
        return {
            "method": name,
            "ndcg@10": 0.4 if ix == "faiss" else dev_ndcg.get(ix, 0.45),
            "dense_r@10": 0.0,
            "r@100": 0.0,
            "train_s": train_s,
        }, None

    monkeypatch.setattr(distill_vq_ablation, "_distill", fake_distill)
    monkeypatch.setattr(distill_vq_ablation, "evaluate_row", fake_evaluate)
    monkeypatch.setattr(distill_vq_ablation, "trained_faiss_index", lambda *a: ("faiss", 2.0))
    cfg = distill_vq.vq_config()
    cfg.train.topk, cfg.train.tau = 50, 0.2  # so "topk=100" is a variant and "tau=0.2" a no-op
    rng = np.random.default_rng(0)
    docs, q = rng.standard_normal((64, 16)).astype(np.float32), rng.standard_normal((8, 16)).astype(np.float32)
    out = distill_vq_ablation.run_ablation(
        docs,
        [f"d{i}" for i in range(64)],
        q,
        q,
        [f"q{i}" for i in range(8)],
        {},
        q,
        q,
        [],
        {},
        code_bytes=[8],
        nlist=4,
        nprobes=[2],
        cfg=cfg,
        methods=("OPQ+PQ",),
        test=False,
    )
    assert out["chosen"] == [{"bytes": 8, "method": "OPQ+PQ", "overrides": chosen}]
    assert ("train.tau=0.2",) not in trained and ("train.ivf_weight=0.0",) not in trained  # no-op / no IVF
    assert trained[-1] == ("train.topk=100", "train.loss=kl_distill")  # the two dev winners, combined
    factors = [r["factor"] for r in out["dev"]]
    assert factors[:2] == ["faiss", "config"] and factors[-1] == "combined"
    assert "dev-chosen overrides" in distill_vq_ablation.format_ablation(out)
