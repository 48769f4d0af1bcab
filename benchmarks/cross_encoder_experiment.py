"""The cross-encoder experiment (issue 24): train a reranker, rerank the best dense run and BM25, distil the
reranker into the bi-encoder, denoise ANCE's negatives with it; tables with `jdr compare`'s significance marks.

  python benchmarks/cross_encoder_experiment.py --plan   # the commands and the estimated wall time; runs nothing
  python benchmarks/cross_encoder_experiment.py          # everything; tables in
                                                         # benchmarks/results/cross_encoder_experiment.{md,json}

Steps, in order, each skipped when its output exists (an interrupted run resumes; `jdr train` itself resumes from
its last checkpoint). ROOT = --root (runs/ce_experiment); configs in configs/ce_exp/:
  1. mine:    `jdr mine --source hybrid --hybrid bm25:4,ann:4 --model minilm` over SciFact train (top 100 of each,
              ANN by the released model) -> ROOT/groups/train_mined.jsonl (8 negatives a query);
  2. ce:      `jdr train` configs/ce_exp/cross_encoder.py on it -> ROOT/cross_encoder (export/ = HF CrossEncoder);
  3. first stage on test: BM25 (`jdr search --bm25`) and the dense run (`--dense-run`; default the best dense row
              of the ANCE experiment when its results exist, else the released model, `jdr evaluate`);
  4. rerank:  the top --depth (100) of each with `jdr rerank` -> ROOT/rerank_{sparse,dense}/test_run.trec;
  5. score:   `jdr score` of step 1's groups with the cross-encoder -> ROOT/groups/train_scored.jsonl;
  6. rows:    configs/ce_exp/{infonce,margin_mse,kl}.py on the scored groups (same steps and negatives),
              ance.py and ance_ce_denoised.py (the cross-encoder judging each refresh's candidates), each tested
              once at the checkpoint with the best dev NDCG@10 (`jdr evaluate --step N --run-output`), as
              benchmarks/ance_experiment.py does (its runner functions are reused).
Tables: rerankers against the dense run they rerank; bi-encoder rows against the InfoNCE row. The SciFact test
split is read once per row; every choice (checkpoints) uses dev.
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
sys.path.insert(0, str(REPO / "benchmarks"))

import ance_experiment as ance  # noqa: E402  (jdr(), best_dev_step(), METRICS: one runner for both experiments)

from jdr.compare import compare_scores, format_markdown  # noqa: E402
from jdr.config import load_config, to_dict  # noqa: E402
from jdr.evaluate import TEST_RUN, per_query_metrics, read_trec_run  # noqa: E402
from jdr.io import atomic_write  # noqa: E402
from jdr.run_info import cpu_model  # noqa: E402

BI_ROWS = ("infonce", "margin_mse", "kl", "ance", "ance_ce_denoised")
LABELS = {
    "sparse": "BM25 (bm25s)",
    "dense": "dense first stage (reranked below)",
    "rerank_sparse": "BM25 top 100 reranked by the cross-encoder",
    "rerank_dense": "dense top 100 reranked by the cross-encoder",
    "released": "all-MiniLM-L6-v2 as released",
    "infonce": "InfoNCE on the scored groups",
    "margin_mse": "Margin-MSE from the cross-encoder",
    "kl": "listwise KL from the cross-encoder",
    "ance": "ANCE (BM25 warm start, ANN refresh)",
    "ance_ce_denoised": "ANCE + cross-encoder denoising",
}
# Reference costs on the 2-core CPU (configs/ance_exp): a train step of 32 x 2 x 256 passage tokens, a forward
# pass over 5 183 passages of 256 tokens. Estimates scale them by tokens.
REF_STEP_TOKENS, REF_ENCODE_TOKENS = 32 * 2 * 256, 5183 * 256


class Plan:
    """The experiment's commands, their outputs (a step is done when its output exists) and time estimates."""

    def __init__(self, args):
        self.args, self.root, self.configs = args, Path(args.root), Path(args.configs)
        self.ce_cfg = load_config(self.configs / "cross_encoder.py", args.set)
        self.cfgs = {r: load_config(self.configs / f"{r}.py", args.set) for r in BI_ROWS}
        self.data = self.ce_cfg.data.dataset
        self.mined = self.root / "groups" / "train_mined.jsonl"
        self.scored = self.root / "groups" / "train_scored.jsonl"
        self.ce = self.root / "cross_encoder"

    def dense_run(self) -> tuple[Path, list[str] | None]:
        """(test run to rerank, the command that makes it or None when it exists already elsewhere)."""
        if self.args.dense_run != "auto":
            return Path(self.args.dense_run), None
        results = REPO / "benchmarks" / "results" / "ance_experiment.json"
        if results.is_file():
            best = json.loads(results.read_text())["best_dense"]
            run = REPO / "runs" / "ance_experiment" / best / "seed0" / TEST_RUN
            if run.is_file():
                return run, None
        out = self.root / "released" / TEST_RUN
        return out, self.test_cmd("minilm", out.parent)

    def mine_cmd(self) -> list[str]:
        return [
            "mine",
            "--data",
            self.data,
            "--split",
            "train",
            "--source",
            "hybrid",
            "--hybrid",
            "bm25:4,ann:4",
            "--model",
            "minilm",
            "--depth",
            "100",
            "--output",
            str(self.mined),
            "--json",
        ]

    def ce_cmd(self) -> list[str]:
        return [
            "train",
            "--config",
            str(self.configs / "cross_encoder.py"),
            "--workdir",
            str(self.ce),
            "--no-progress",
            f"--config.data.jsonl.path={self.mined}",
            *[f"--config.{o}" for o in self.args.set],
        ]

    def rerank_cmd(self, run: Path, name: str) -> list[str]:
        return [
            "rerank",
            "--model",
            str(self.ce),
            "--run",
            str(run),
            "--data",
            self.data,
            "--depth",
            str(self.args.depth),
            "--output",
            str(self.root / name / TEST_RUN),
            "--tag",
            name,
        ]

    def score_cmd(self) -> list[str]:
        return ["score", "--model", str(self.ce), "--input", str(self.mined), "--output", str(self.scored), "--json"]

    def sparse_cmd(self) -> list[str]:
        return [
            "search",
            "--bm25",
            "--data",
            self.data,
            "--split",
            "test",
            "--output",
            str(self.root / "sparse" / TEST_RUN),
        ]

    def test_cmd(self, model: str, run_dir: Path, step=None) -> list[str]:
        return (
            ["evaluate", "--model", model]
            + ([] if step is None else ["--step", str(step)])
            + [
                "--data",
                self.data,
                "--split",
                "test",
                "--max-length",
                "256",
                "--run-output",
                str(run_dir / TEST_RUN),
                "--json",
            ]
        )

    def row_cmd(self, row: str) -> list[str]:
        over = [f"data.jsonl.path={self.scored}"]
        if row == "ance_ce_denoised":
            over.append(f"negatives.ce_denoise_model={self.ce}")
        return [
            "train",
            "--config",
            str(self.configs / f"{row}.py"),
            "--workdir",
            str(self.root / row),
            "--no-progress",
            *[f"--config.{o}" for o in [*over, *self.args.set]],
        ]

    # --- estimates (seconds) ---
    def _train_s(self, cfg, pair: bool = False) -> float:
        length = (cfg.model.query_max_length + cfg.model.passage_max_length) if pair else cfg.model.passage_max_length
        tokens = cfg.train.global_batch_size * (1 + cfg.negatives.num) * length
        return cfg.train.steps * self.args.step_seconds * tokens / REF_STEP_TOKENS

    def _forward_s(self, tokens: float) -> float:
        return self.args.encode_seconds * tokens / REF_ENCODE_TOKENS

    def estimates(self) -> dict[str, float]:
        pair = self.ce_cfg.model.query_max_length + self.ce_cfg.model.passage_max_length - 1
        corpus_256 = self._forward_s(5183 * 256)
        est = {
            "mine": corpus_256 + 60,
            "ce": self._train_s(self.ce_cfg, pair=True) + 60,
            "first_stage": corpus_256 + 60,
            "rerank": 2 * self._forward_s(300 * self.args.depth * pair) + 60,
            "score": self._forward_s(809 * 10 * pair) + 30,
        }
        for row, cfg in self.cfgs.items():
            evals = cfg.train.steps // cfg.eval.every
            dev = self._forward_s((cfg.eval.corpus_sample + 80) * cfg.model.passage_max_length)
            refresh = (cfg.train.steps - 1) // cfg.negatives.refresh_every if cfg.negatives.refresh_every else 0
            judged = 729 * cfg.negatives.ce_denoise_depth if cfg.negatives.ce_denoise_margin is not None else 0
            ce = self._forward_s(judged * pair)
            est[row] = (
                self._train_s(cfg)
                + evals * dev
                + corpus_256
                + 60
                + refresh * (self._forward_s(5183 * cfg.model.passage_max_length) + ce)
            )
        return est

    def describe(self) -> str:
        est = self.estimates()
        dense, make_dense = self.dense_run()
        steps = [("mine", self.mine_cmd()), ("ce", self.ce_cmd()), ("first_stage", self.sparse_cmd())]
        if make_dense:
            steps.append(("first_stage", make_dense))
        steps += [
            ("rerank", self.rerank_cmd(dense, "rerank_dense")),
            ("rerank", self.rerank_cmd(self.root / "sparse" / TEST_RUN, "rerank_sparse")),
            ("score", self.score_cmd()),
        ]
        lines = [f"cross-encoder experiment, root {self.root}; dense run to rerank: {dense}"]
        shown = set()
        for key, cmd in steps:
            tag = f"~{est[key] / 60:.0f} min" if key not in shown else "(above)"
            shown.add(key)
            lines.append(f"  [{key}, {tag}] jdr {shlex.join(cmd)}")
        for row in BI_ROWS:
            lines.append(f"  [{row}, ~{est[row] / 60:.0f} min] jdr {shlex.join(self.row_cmd(row))}")
            lines.append(f"      then jdr {shlex.join(self.test_cmd(str(self.root / row), self.root / row, 'BEST'))}")
        lines.append(
            f"estimated total ~{sum(est.values()) / 60:.0f} min (train step {self.args.step_seconds:g} s at "
            f"32 x 2 x 256 tokens, forward {self.args.encode_seconds:g} s per 5 183 x 256 tokens)"
        )
        return "\n".join(lines)


def once(out: Path, cmd: list[str], log: Path) -> str | None:
    """Run `jdr cmd` unless `out` exists; its stdout, or None when skipped."""
    if out.exists():
        print(f"[{out}] exists, skipped", flush=True)
        return None
    print(f"[{out}] jdr {cmd[0]} ...", flush=True)
    return ance.jdr(cmd, log)


def run_bi_row(plan: Plan, row: str) -> dict:
    """Train (unless final_metrics.json exists) and test the best-dev checkpoint once -> its record."""
    wd = plan.root / row
    record_path = wd / "test_metrics.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    t0 = time.time()
    if not (wd / "final_metrics.json").is_file():
        ance.jdr(plan.row_cmd(row), plan.root / f"{row}.log")
    train_s = time.time() - t0
    step, dev, curve = ance.best_dev_step(wd)
    out = ance.jdr(plan.test_cmd(str(wd), wd, step), plan.root / f"{row}.log")
    record = {
        "row": row,
        "step": step,
        "dev_ndcg@10": dev,
        "dev_curve": curve,
        "train_wall_s": train_s,
        "test": json.loads(out.strip().splitlines()[-1]),
    }
    with atomic_write(record_path) as f:
        json.dump(record, f, indent=1)
    return record


def run_all(plan: Plan) -> tuple[dict, dict[str, Path]]:
    walls = {}
    t0 = time.time()
    once(plan.mined, plan.mine_cmd(), plan.root / "mine.log")
    walls["mine"] = time.time() - t0
    t0 = time.time()
    once(plan.ce / "final_metrics.json", plan.ce_cmd(), plan.root / "cross_encoder.log")
    walls["ce"] = time.time() - t0
    once(plan.root / "sparse" / TEST_RUN, plan.sparse_cmd(), plan.root / "sparse.log")
    dense, make_dense = plan.dense_run()
    if make_dense:
        once(dense, make_dense, plan.root / "released.log")
    t0 = time.time()
    for name, run in (("rerank_dense", dense), ("rerank_sparse", plan.root / "sparse" / TEST_RUN)):
        once(plan.root / name / TEST_RUN, plan.rerank_cmd(run, name), plan.root / f"{name}.log")
    walls["rerank"] = time.time() - t0
    t0 = time.time()
    once(plan.scored, plan.score_cmd(), plan.root / "score.log")
    walls["score"] = time.time() - t0
    records = {row: run_bi_row(plan, row) for row in BI_ROWS}
    runs = {
        "sparse": plan.root / "sparse" / TEST_RUN,
        "dense": dense,
        "rerank_sparse": plan.root / "rerank_sparse" / TEST_RUN,
        "rerank_dense": plan.root / "rerank_dense" / TEST_RUN,
        **{row: plan.root / row / TEST_RUN for row in BI_ROWS},
    }
    return {"records": records, "walls": walls}, runs


def tables(plan: Plan, runs: dict[str, Path]) -> tuple:
    from jdr.data.beir import load_beir, resolve_dataset

    test = load_beir(resolve_dataset(plan.data), "test")
    scores = {}
    for name, path in runs.items():
        per = per_query_metrics(test.qrels, read_trec_run(path), ignore_identical_ids=True, metrics=ance.METRICS)
        qids = list(per[ance.METRICS[0]])
        scores[name] = {m: np.asarray([per[m][q] for q in qids]) for m in ance.METRICS}
    kw = dict(metrics=ance.METRICS, resamples=plan.args.resamples, seed=0)
    rerank = compare_scores(
        {k: scores[k] for k in ("dense", "rerank_dense", "sparse", "rerank_sparse")}, baseline="dense", **kw
    )
    bi = compare_scores({k: scores[k] for k in BI_ROWS}, baseline="infonce", **kw)
    return rerank, bi


def write_report(plan: Plan, result: dict, rerank, bi, argv: list[str]) -> str:
    recs = result["records"]
    extra = {
        "dev NDCG@10": {r: f"{recs[r]['dev_ndcg@10']:.4f}" for r in BI_ROWS},
        "step (dev)": {r: str(recs[r]["step"]) for r in BI_ROWS},
        "train min": {r: f"{recs[r]['train_wall_s'] / 60:.1f}" for r in BI_ROWS},
    }
    md = [
        f"# Cross-encoders and distillation ({plan.data}, test read once per row)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores. Command: `python benchmarks/cross_encoder_experiment.py "
        f"{shlex.join(argv)}`. Configs: `{plan.configs}`. Cross-encoder: all-MiniLM-L6-v2 + fresh head, "
        f"{plan.ce_cfg.train.steps} steps, localized-contrastive over 1 + {plan.ce_cfg.negatives.num} BM25/ANN "
        f"negatives. Reranking depth {plan.args.depth}. Walls (min): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in result["walls"].items())
        + ".",
        "",
        "Reranking (against the dense first stage):",
        "",
        format_markdown(rerank, labels=LABELS),
        "",
        "Bi-encoders at the same steps (against InfoNCE on the same groups):",
        "",
        format_markdown(bi, labels=LABELS, extra=extra),
        "",
    ]
    text = "\n".join(md)
    out = Path(plan.args.out)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write(text)
    with atomic_write(out.with_suffix(".json")) as f:
        json.dump(
            {
                "command": ["python", "benchmarks/cross_encoder_experiment.py", *argv],
                "cpu": cpu_model(),
                "configs": {r: to_dict(c) for r, c in {**plan.cfgs, "cross_encoder": plan.ce_cfg}.items()},
                **result,
                "rerank": rerank.to_dict(),
                "bi_encoders": bi.to_dict(),
            },
            f,
            indent=1,
        )
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="configs/ce_exp", help="dir of the configs (run from the repo root)")
    p.add_argument("--root", default="runs/ce_experiment", help="workdirs, runs and groups")
    p.add_argument(
        "--dense-run",
        default="auto",
        help="TREC test run to rerank ('auto': the ANCE experiment's "
        "best dense row if its results exist, else the released model's run)",
    )
    p.add_argument("--depth", type=int, default=100, help="documents reranked per query")
    p.add_argument("--set", action="append", default=[], help="config override a.b=v for every training")
    p.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples")
    p.add_argument("--step-seconds", type=float, default=13.0, help="estimate: s/step at 32 x 2 x 256 tokens")
    p.add_argument("--encode-seconds", type=float, default=300.0, help="estimate: s per 5 183 x 256-token forward")
    p.add_argument("--plan", action="store_true", help="print the commands and the estimate; run nothing")
    p.add_argument(
        "--out",
        default="benchmarks/results/cross_encoder_experiment",
        help="results path without extension (.md and .json)",
    )
    args = p.parse_args(argv)
    plan = Plan(args)
    print(plan.describe(), flush=True)
    if args.plan:
        return 0
    result, runs = run_all(plan)
    rerank, bi = tables(plan, runs)
    print(write_report(plan, result, rerank, bi, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
