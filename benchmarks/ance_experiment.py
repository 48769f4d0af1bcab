"""The ANCE experiment "with room to differ" (issue 16): train every row of configs/ance_exp/, test each once,
fuse BM25 with the best dense row, and write the table with `jdr compare`'s significance marks.

  python benchmarks/ance_experiment.py --plan        # the commands and the estimated wall time; runs nothing
  python benchmarks/ance_experiment.py               # all rows, then benchmarks/results/ance_experiment.{md,json}

Rows are configs/ance_exp/*.py except base.py (random, bm25, ance, hybrid, denoised, then any other overlay, e.g. a
later ltre.py, alphabetically), each trained with `jdr train` in ROOT/<row>/seed<S>, plus two references: the
released all-MiniLM-L6-v2 (`jdr evaluate`) and sparse BM25 (`jdr search --bm25` with the rows' `negatives.bm25_preset`,
so the sparse reference and the BM25 negatives are the same BM25).
Per row and seed, in order, each step skipped when its output exists (so an interrupted run resumes; `jdr
train` itself resumes from the row's last checkpoint):
  1. train: EPOCHS epochs (`--epochs`, the one number that scales the budget; default: base.py's EPOCHS), dev
     evaluation + checkpoint every epoch, ANN refresh every epoch where the row refreshes;
  2. test: the checkpoint with the best dev NDCG@10, evaluated ONCE on the test split at `--eval-max-length`
     (256) with `jdr evaluate --run-output <workdir>/test_run.trec`.
Then: BM25 + the dense row with the best dev NDCG@10 fused (RRF k=60, and min-max linear with equal weights;
no tuning, so no test-set choice), and two tables: every row against the baseline row (`--baseline`, default
the BM25-negatives row), and the fusion against the best dense row. With several seeds a row's per-query values
are averaged over its seeds before the paired tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jdr.compare import compare_scores, format_markdown  # noqa: E402
from jdr.config import load_config, to_dict  # noqa: E402
from jdr.evaluate import TEST_RUN, per_query_metrics, read_trec_run, write_trec_run  # noqa: E402
from jdr.io import atomic_write  # noqa: E402
from jdr.run_info import cpu_model  # noqa: E402  (one definition: jdr/run_info.py)

ROW_ORDER = ("random", "bm25", "ance", "hybrid", "denoised")
LABELS = {
    "released": "all-MiniLM-L6-v2 as released (no fine-tuning)",
    "random": "random negatives",
    "bm25": "BM25 negatives",
    "ance": "ANCE (BM25 warm start, ANN every epoch)",
    "hybrid": "hybrid: 1 BM25 + 2 ANN",
    "denoised": "denoised ANN (skip top 3, teacher threshold 0)",
    "ltre": "LTRe (query tower only, full retrieval over a fixed index)",
}
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
# Reference costs on the 2-core CPU (issue 16): a step of 32 queries x (1 pos + 1 neg) at passage 256, a corpus
# encode of 5 183 docs at 256 tokens. The estimate scales them by passage tokens (attention is a small share).
REF_STEP_TOKENS, REF_DOCS = 32 * 2 * 256, 5183


def rows_of(config_dir: Path, only: str | None) -> list[str]:
    found = sorted(p.stem for p in config_dir.glob("*.py") if p.stem != "base")
    rows = [r for r in ROW_ORDER if r in found] + [r for r in found if r not in ROW_ORDER]
    if only:
        unknown = set(only.split(",")) - set(found)
        if unknown:
            raise SystemExit(f"--rows: no config {sorted(unknown)} in {config_dir} (have {found})")
        rows = [r for r in rows if r in only.split(",")]
    return rows


def steps_per_epoch(cfg) -> tuple[int, int]:
    """(steps per epoch, corpus size) of `cfg`'s training data after its dev hold-out."""
    from jdr.data.groups import GroupIterator
    from jdr.data.split import split_dev
    from jdr.train.sources import load_labeled

    data = load_labeled(cfg.data.source, cfg)
    train_qids, _ = split_dev(data.qrels, cfg.data.dev_queries, cfg.seed)
    it = GroupIterator(
        train_qids,
        {q: data.qrels[q] for q in train_qids},
        None,
        global_batch_size=cfg.train.global_batch_size,
        num_negatives=0,
        seed=cfg.seed,
    )
    return it.steps_per_epoch(0), len(data.corpus)


class Plan:
    """The commands of the experiment with their outputs (a step is done when its output exists) and estimates."""

    def __init__(self, args):
        self.args, self.root = args, Path(args.root)
        self.config_dir = Path(args.configs)
        self.rows = rows_of(self.config_dir, args.rows)
        self.seeds = [int(s) for s in args.seeds.split(",")]
        base = load_config(self.config_dir / "base.py", args.set)
        self.spe, self.n_docs = steps_per_epoch(base)
        self.epochs = args.epochs if args.epochs is not None else _module_epochs(self.config_dir / "base.py")
        self.steps = max(1, round(self.epochs * self.spe))
        self.data = base.data.dataset
        self.cfgs = {r: load_config(self.config_dir / f"{r}.py", args.set) for r in self.rows}
        self.bm25_preset = base.negatives.bm25_preset

    def workdir(self, row: str, seed: int) -> Path:
        return self.root / row / f"seed{seed}"

    def train_cmd(self, row: str, seed: int) -> list[str]:
        over = [f"seed={seed}", f"train.steps={self.steps}", f"eval.every={self.spe}", f"checkpoint.every={self.spe}"]
        if self.cfgs[row].negatives.refresh_every > 0:
            over.append(f"negatives.refresh_every={self.spe}")
        return [
            "train",
            "--config",
            str(self.config_dir / f"{row}.py"),
            "--workdir",
            str(self.workdir(row, seed)),
            "--no-progress",
        ] + [f"--config.{o}" for o in [*self.args.set, *over]]

    def test_cmd(self, model: str, run_dir: Path, step: int | str | None = None) -> list[str]:
        return (
            ["evaluate", "--model", model]
            + ([] if step is None else ["--step", str(step)])
            + [
                "--data",
                self.data,
                "--split",
                "test",
                "--max-length",
                str(self.args.eval_max_length),
                "--run-output",
                str(run_dir / TEST_RUN),
                "--json",
            ]
        )

    def sparse_cmd(self) -> list[str]:
        return [
            "search",
            "--bm25",
            "--data",
            self.data,
            "--split",
            "test",
            "--bm25-preset",
            self.bm25_preset,
            "--output",
            str(self.root / "sparse" / TEST_RUN),
        ]

    def estimate(self, row: str) -> float:
        """Seconds for one seed of `row`: steps, dev evals, refreshes, the test encode, ~60 s start-up/compile."""
        c, a = self.cfgs[row], self.args
        step_s = (
            a.step_seconds
            * c.train.global_batch_size
            * (1 + c.negatives.num)
            * c.model.passage_max_length
            / REF_STEP_TOKENS
        )

        def encode_s(docs, length):
            return a.encode_seconds * docs / REF_DOCS * length / 256

        dev_docs = (c.eval.corpus_sample + c.data.dev_queries) if c.eval.corpus_sample else self.n_docs
        evals = self.steps // self.spe + (self.steps % self.spe > 0)
        refreshes = (self.steps - 1) // self.spe if c.negatives.refresh_every > 0 else 0
        return (
            self.steps * step_s
            + evals * encode_s(dev_docs, c.model.passage_max_length)
            + refreshes * encode_s(self.n_docs, c.model.passage_max_length)
            + encode_s(self.n_docs, a.eval_max_length)
            + 60
        )

    def describe(self) -> str:
        total, lines = (
            0.0,
            [
                f"{len(self.rows)} rows x {len(self.seeds)} seed(s), {self.epochs} epochs = "
                f"{self.steps} steps ({self.spe} per epoch); root {self.root}"
            ],
        )
        for row in self.rows:
            est = self.estimate(row)
            total += est * len(self.seeds)
            for seed in self.seeds:
                lines.append(f"  [{row} seed {seed}, ~{est / 60:.0f} min] jdr {shlex.join(self.train_cmd(row, seed))}")
                wd = self.workdir(row, seed)
                lines.append(f"      then jdr {shlex.join(self.test_cmd(str(wd), wd, 'BEST_DEV_STEP'))}")
        if self.args.released_model != "none":
            total += self.args.encode_seconds * self.args.eval_max_length / 256 + 30
            released = self.test_cmd(self.args.released_model, self.root / "released")
            lines.append(f"  [released] jdr {shlex.join(released)}")
        lines.append(f"  [sparse] jdr {shlex.join(self.sparse_cmd())}")
        lines.append(
            f"estimated total ~{total / 60:.0f} min (step {self.args.step_seconds:g} s at 32 x 2 x 256 "
            f"passage tokens, corpus encode {self.args.encode_seconds:g} s at 256 tokens)"
        )
        return "\n".join(lines)


def _module_epochs(base: Path) -> float:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ance_exp_base", base)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EPOCHS


def jdr(cmd: list[str], log: Path) -> str:
    """Run `jdr CMD` in a subprocess (this interpreter, this checkout's jdr, the current directory), stderr to `log`;
    return its stdout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ jdr {shlex.join(cmd)}\n")
        f.flush()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(
            [sys.executable, "-m", "jdr.cli", *cmd], stdout=subprocess.PIPE, stderr=f, text=True, env=env
        )
        f.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"jdr {cmd[0]} failed (exit {done.returncode}); see {log}")
    return done.stdout


def best_dev_step(workdir: Path) -> tuple[int, float, dict]:
    """The step with the best dev NDCG@10 in `workdir/metrics.jsonl` (ties: the later), its value, all values."""
    dev = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "dev/ndcg@10" in rec:
            dev[rec["step"]] = rec["dev/ndcg@10"]
    if not dev:
        raise SystemExit(f"{workdir}: no dev evaluation in metrics.jsonl")
    step = max(dev, key=lambda s: (dev[s], s))
    return step, dev[step], dev


def run_row(plan: Plan, row: str, seed: int) -> dict:
    """Train (unless final_metrics.json exists) and test once (unless test_metrics.json exists) -> its record."""
    wd = plan.workdir(row, seed)
    record_path = wd / "test_metrics.json"
    if record_path.is_file():
        print(f"[{row} seed {seed}] done, skipped", flush=True)
        return json.loads(record_path.read_text())
    t0 = time.time()
    if not (wd / "final_metrics.json").is_file():
        print(f"[{row} seed {seed}] training (~{plan.estimate(row) / 60:.0f} min)", flush=True)
        jdr(plan.train_cmd(row, seed), wd.parent / f"seed{seed}.log")
    train_s = time.time() - t0
    step, dev, dev_curve = best_dev_step(wd)
    t0 = time.time()
    out = jdr(plan.test_cmd(str(wd), wd, step), wd.parent / f"seed{seed}.log")
    record = {
        "row": row,
        "seed": seed,
        "step": step,
        "dev_ndcg@10": dev,
        "dev_curve": dev_curve,
        "test": json.loads(out.strip().splitlines()[-1]),
        "train_wall_s": train_s,
        "test_wall_s": time.time() - t0,
        "final": json.loads((wd / "final_metrics.json").read_text()),
    }
    with atomic_write(record_path) as f:
        json.dump(record, f, indent=1)
    print(
        f"[{row} seed {seed}] step {step}: dev NDCG@10 {dev:.4f}, test NDCG@10 {record['test']['ndcg@10']:.4f}",
        flush=True,
    )
    return record


def run_references(plan: Plan) -> None:
    if not (plan.root / "sparse" / TEST_RUN).is_file():
        jdr(plan.sparse_cmd(), plan.root / "sparse" / "log")
    released = plan.root / "released"
    if plan.args.released_model != "none" and not (released / "test_metrics.json").is_file():
        out = jdr(plan.test_cmd(plan.args.released_model, released), released / "log")
        with atomic_write(released / "test_metrics.json") as f:
            f.write(out.strip().splitlines()[-1] + "\n")


def build_results(plan: Plan, records: dict[str, list[dict]]) -> dict:
    """Per-query values (averaged over seeds), the fused rows, both comparisons -> the results dict."""
    from jdr.data.beir import load_beir, resolve_dataset
    from jdr.fusion import fuse

    test = load_beir(resolve_dataset(plan.data), "test")

    def values(runs: list[dict]) -> dict[str, np.ndarray]:
        per = [per_query_metrics(test.qrels, r, ignore_identical_ids=True, metrics=METRICS) for r in runs]
        qids = list(per[0][METRICS[0]])
        return {m: np.mean([[p[m][q] for q in qids] for p in per], axis=0) for m in METRICS}

    runs = {row: [read_trec_run(plan.workdir(row, s) / TEST_RUN) for s in plan.seeds] for row in records}
    refs = {"sparse": [read_trec_run(plan.root / "sparse" / TEST_RUN)]}
    if (plan.root / "released" / TEST_RUN).is_file():
        refs["released"] = [read_trec_run(plan.root / "released" / TEST_RUN)]
    dev = {row: float(np.mean([r["dev_ndcg@10"] for r in recs])) for row, recs in records.items()}
    best = max(dev, key=dev.get)
    for method in ("rrf", "linear"):
        fused = [fuse([refs["sparse"][0], r], method) for r in runs[best]]
        for s, run in zip(plan.seeds, fused):
            write_trec_run(plan.root / f"fused_{method}" / f"seed{s}" / TEST_RUN, run, method, digits=10)
        runs[f"fused_{method}"] = fused
    labels = {
        **LABELS,
        "sparse": f"BM25 ({plan.bm25_preset}), sparse",
        "fused_rrf": f"sparse BM25 + {best} row (RRF, k 60)",
        "fused_linear": f"sparse BM25 + {best} row (min-max, 1:1)",
    }
    scores = {name: values(r) for name, r in {**refs, **runs}.items()}
    kw = dict(metrics=METRICS, resamples=plan.args.resamples, seed=0)
    baseline = plan.args.baseline if plan.args.baseline in scores else best
    main_cmp = compare_scores(scores, baseline=baseline, **kw)
    fusion_cmp = compare_scores(
        {k: scores[k] for k in (best, "sparse", "fused_rrf", "fused_linear")}, baseline=best, **kw
    )
    extra = {
        "dev NDCG@10": {row: f"{dev[row]:.4f}" for row in records},
        "step (dev)": {row: "/".join(str(r["step"]) for r in recs) for row, recs in records.items()},
        "train + test min": {
            row: f"{np.mean([r['train_wall_s'] + r['test_wall_s'] for r in recs]) / 60:.1f}"
            for row, recs in records.items()
        },
    }
    if len(plan.seeds) > 1:
        extra["test NDCG@10 per seed"] = {
            row: " ".join(f"{r['test']['ndcg@10']:.4f}" for r in recs) for row, recs in records.items()
        }
    return {
        "main": main_cmp,
        "fusion": fusion_cmp,
        "labels": labels,
        "extra": extra,
        "best_dense": best,
        "dev": dev,
        "records": records,
    }


def plot_dev_curves(plan: Plan, records: dict[str, list[dict]], labels: dict, path: Path) -> bool:
    """Dev NDCG@10 against steps, one line per row (seed-averaged): where each row's curve stops rising."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib: benchmarks/requirements-bench.txt
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row, recs in records.items():
        curves = [{int(k): v for k, v in r["dev_curve"].items()} for r in recs]  # json keys are strings
        steps = sorted(curves[0])
        ax.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], "o-", label=labels.get(row, row))
    for epoch in range(1, int(np.ceil(plan.steps / plan.spe))):
        ax.axvline(epoch * plan.spe, color="0.85", lw=0.8, zorder=0)
    ax.set(xlabel="step (grey: epoch boundaries, ANN refresh)", ylabel="dev NDCG@10", title=f"{plan.data} dev")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write_report(plan: Plan, res: dict, out: Path, argv: list[str]) -> str:
    seeds = ",".join(map(str, plan.seeds))
    done = list(res["records"])
    pending = [r for r in plan.rows if r not in res["records"]]
    wds = " ".join(str(plan.workdir(r, plan.seeds[0])) for r in done)
    names = ",".join([*done, "sparse"])
    png = plot_dev_curves(plan, res["records"], res["labels"], out.with_suffix(".png"))
    md = [
        f"# ANCE experiment with room to differ ({plan.data}, test evaluated once per row)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores. Command: `python benchmarks/ance_experiment.py "
        f"{shlex.join(argv)}`. {len(plan.rows)} rows x seeds {seeds}, {plan.epochs} epochs = {plan.steps} steps "
        f"({plan.spe} per epoch), configs in `{plan.config_dir}` (see base.py for the design). Checkpoint per row: "
        f"best dev NDCG@10 (dev: {plan.cfgs[plan.rows[0]].data.dev_queries} held-out train queries); test at "
        f"{plan.args.eval_max_length} tokens. Fused: BM25 + the best dense row by dev NDCG@10 "
        f"({res['best_dense']}).",
        "",
        *([f"**Partial: rows still to run: {', '.join(pending)}.**", ""] if pending else []),
        *([f"Dev NDCG@10 against steps: `{out.with_suffix('.png').name}`.", ""] if png else []),
        format_markdown(res["main"], labels=res["labels"], extra=res["extra"]),
        "",
        "Fusion against the best dense row alone:",
        "",
        format_markdown(res["fusion"], labels=res["labels"]),
        "",
        f"Reproduce a table for seed {plan.seeds[0]} with `jdr compare --data {plan.data} --split test {wds} "
        f"{plan.root}/sparse/{TEST_RUN} --names {names} --baseline {res['main'].baseline} --markdown` (workdirs "
        f"hold their test_run.trec).",
    ]
    text = "\n".join(md) + "\n"
    with atomic_write(out.with_suffix(".md")) as f:
        f.write(text)
    with atomic_write(out.with_suffix(".json")) as f:
        json.dump(
            {
                "command": ["python", "benchmarks/ance_experiment.py", *argv],
                "cpu": cpu_model(),
                "epochs": plan.epochs,
                "steps": plan.steps,
                "steps_per_epoch": plan.spe,
                "seeds": plan.seeds,
                "rows": done,
                "pending": pending,
                "configs": {r: to_dict(c) for r, c in plan.cfgs.items()},
                "best_dense": res["best_dense"],
                "dev_ndcg@10": res["dev"],
                "records": res["records"],
                "comparison": res["main"].to_dict(),
                "fusion": res["fusion"].to_dict(),
            },
            f,
            indent=1,
        )
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        default="configs/ance_exp",
        help="dir of base.py + row overlays (paths are relative to the current directory: run from the repo root)",
    )
    p.add_argument("--root", default="runs/ance_experiment", help="workdirs of the rows and references")
    p.add_argument("--rows", default=None, help="comma-separated subset of the rows (default: every overlay)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; per-query values averaged over them")
    p.add_argument("--epochs", type=float, default=None, help="budget: epochs per row (default: base.py's EPOCHS)")
    p.add_argument("--set", action="append", default=[], help="config override a.b=v for every row (repeatable)")
    p.add_argument("--eval-max-length", type=int, default=256, help="passage tokens of the test evaluation")
    p.add_argument("--released-model", default="minilm", help="reference row: model evaluated as is ('none': skip)")
    p.add_argument("--baseline", default="bm25", help="row the main table tests against")
    p.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples")
    p.add_argument("--step-seconds", type=float, default=13.0, help="estimate: s/step at 32 x 2 x 256 passage tokens")
    p.add_argument("--encode-seconds", type=float, default=300.0, help="estimate: s per 5 183-doc encode at 256")
    p.add_argument("--plan", action="store_true", help="print the commands and the time estimate; run nothing")
    p.add_argument(
        "--out",
        default="benchmarks/results/ance_experiment",
        help="results path without extension (.md and .json are written)",
    )
    args = p.parse_args(argv)
    plan = Plan(args)
    print(plan.describe(), flush=True)
    if args.plan:
        return 0
    argv = sys.argv[1:] if argv is None else argv
    run_references(plan)
    records: dict[str, list[dict]] = {}
    for row in plan.rows:  # the table is rewritten as each row lands, so an interruption loses at most one row
        records[row] = [run_row(plan, row, s) for s in plan.seeds]
        text = write_report(plan, build_results(plan, records), Path(args.out), argv)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
