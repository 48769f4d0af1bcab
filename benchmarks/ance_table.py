"""The ANCE table at CPU scale: random vs BM25 vs ANCE negatives on SciFact, same budget, plus refresh cost.

Run the three trainings first (same steps, batch, lr; see the configs), then this script:

  jdr train --config configs/scifact_rand.py --workdir runs/scifact_rand
  jdr train --config configs/scifact_bm25.py --workdir runs/scifact_bm25
  jdr train --config configs/scifact_ance.py --workdir runs/scifact_ance     # synchronous refresh at 10, 20
  python benchmarks/ance_table.py --runs runs/scifact_rand runs/scifact_bm25 runs/scifact_ance \
      [--measure-encode] [--out benchmarks/results/ance_table.md]

It reads each workdir's final_metrics.json (test NDCG@10 / MRR@10 / R@100 on SciFact test, evaluated once at
the end) and the ANCE refresh records (encode / index / mine seconds, age in steps, how long the step loop
waited). Each refresh is divided by the same run's final test evaluation (a full corpus encode with the same
model, length and batch size, plus 300 test queries and an exact search): the bare-encode reference measured in
the same process, with no extra CPU time. `--measure-encode` also times a bare corpus encode of the base model in
this process, for a second ratio (run it on an idle machine).

When every workdir holds the `test_run.trec` of its final test evaluation (runs made after issue 16; for older
ones: `jdr evaluate --model RUN --data scifact --run-output RUN/test_run.trec`), the NDCG@10 / MRR@10 / R@100 cells
carry `jdr compare`'s significance mark against the first run (paired randomization test, Holm-corrected).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jdr.io import atomic_write


def _row(workdir: Path) -> dict:
    final = json.loads((workdir / "final_metrics.json").read_text())
    run = json.loads((workdir / "run.json").read_text())
    refreshes = final.get("negatives/refreshes", [])
    return {
        "run": workdir.name,
        "negatives": run["config"]["negatives"]["source"]
        + (
            f" ({run['config']['negatives']['refresh_mode']} refresh)"
            if run["config"]["negatives"]["refresh_every"]
            else ""
        ),
        "steps": final["step"],
        "ndcg@10": final["test/ndcg@10"],
        "mrr@10": final["test/mrr@10"],
        "recall@100": final["test/recall@100"],
        "refreshes": len(refreshes),
        "skipped": len(final.get("negatives/skipped_steps", [])),
        "encode_s": sum(r["timings"].get("encode_s", 0.0) for r in refreshes),
        "index_s": sum(r["timings"].get("index_s", 0.0) for r in refreshes),
        "mine_s": sum(r["timings"].get("mine_s", 0.0) for r in refreshes),
        "loop_wait_s": sum(r["wait_seconds"] for r in refreshes),
        "age_steps": [r["age_steps"] for r in refreshes],
        "refresh_s": [r["build_seconds"] for r in refreshes],
        # The run's own bare encode: the final test evaluation encodes the whole corpus with the same model shape,
        # passage length and batch size (plus 300 short test queries and an exact search), in the same process.
        "test_eval_s": final.get("test/eval_seconds"),
    }


def measure_bare_encode(batch_size: int = 128) -> float:
    """Seconds to encode the SciFact corpus at 256 tokens with the base all-MiniLM-L6-v2 (nothing else running)."""
    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.models.hf import find_minilm, load
    from jdr.models.inference import encode_texts

    corpus = load_corpus(resolve_dataset("scifact") / "corpus.jsonl")
    params, spec, tok = load(find_minilm())
    t0 = time.perf_counter()
    encode_texts(params, spec, tok, corpus.passages(), tower="passage", batch_size=batch_size, progress=True)
    return time.perf_counter() - t0


def significance(workdirs: list[Path]) -> tuple[dict[str, dict[str, str]], str] | None:
    """`jdr compare` of the workdirs' test runs against the first -> ({run: {metric: mark}}, footnote), or None
    when a workdir has no test_run.trec."""
    from jdr.compare import MARK, compare_runs, format_markdown, judgments, load_run, run_path
    from jdr.evaluate import TEST_RUN

    if not all((w / TEST_RUN).is_file() for w in workdirs):
        return None
    dataset = json.loads((workdirs[0] / "run.json").read_text())["config"]["data"]
    qrels, query_ids, doc_ids, identical = judgments(data=dataset["dataset"], split=dataset["test_split"])
    runs = {w.name: load_run(run_path(w), query_ids=query_ids, doc_ids=doc_ids) for w in workdirs}
    c = compare_runs(qrels, runs, ignore_identical_ids=identical, metrics=("ndcg@10", "mrr@10", "recall@100"))
    marks = {r.name: {m: MARK if e.get("significant") else "" for m, e in r.metrics.items()} for r in c.runs}
    return marks, format_markdown(c).splitlines()[-1]


def format_table(rows: list[dict], bare_encode_s: float | None, marks: dict | None = None) -> str:
    """Markdown: one row per run. Refresh cost per refresh = encode + index + mine; "/ test encode" divides the
    whole refresh (the loop's wait in sync mode) by the same run's final test evaluation; "/ bare encode" by a
    separately measured bare corpus encode, when given. `marks`: {run: {metric: significance mark}}."""
    lines = [
        "| negatives | steps | NDCG@10 | MRR@10 | R@100 | refreshes (skipped) | encode s | index s | mine s "
        "| loop waited s | refresh / test encode (same run) | refresh / bare encode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = max(r["refreshes"], 1)
        per = (r["encode_s"] + r["index_s"] + r["mine_s"]) / n
        ratio = f"{per / bare_encode_s:.2f}x" if bare_encode_s and r["refreshes"] else "-"
        same_run = (
            " / ".join(f"{s / r['test_eval_s']:.2f}x" for s in r["refresh_s"])
            if r["refreshes"] and r.get("test_eval_s")
            else "-"
        )
        m = (marks or {}).get(r["run"], {})
        lines.append(
            f"| {r['negatives']} | {r['steps']} | {r['ndcg@10']:.4f}{m.get('ndcg@10', '')} | "
            f"{r['mrr@10']:.4f}{m.get('mrr@10', '')} | {r['recall@100']:.4f}{m.get('recall@100', '')} | "
            f"{r['refreshes']} ({r['skipped']}) | {r['encode_s']:.0f} | "
            f"{r['index_s']:.1f} | {r['mine_s']:.1f} | {r['loop_wait_s']:.2f} | {same_run} | {ratio} |"
        )
    if bare_encode_s:
        lines.append(f"\nBare corpus encode of the base model (same machine): {bare_encode_s:.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="jdr train workdirs")
    p.add_argument("--measure-encode", action="store_true", help="time a bare corpus encode in this process")
    p.add_argument("--baseline-encode-seconds", type=float, default=None, help="bare encode seconds, if known")
    p.add_argument("--out", default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    rows = [_row(Path(r)) for r in args.runs]
    bare = measure_bare_encode() if args.measure_encode else args.baseline_encode_seconds
    marks = significance([Path(r) for r in args.runs])
    table = format_table(rows, bare, marks and marks[0])
    if marks:
        table += "\n\n" + marks[1]
    print(table)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(table + "\n\n" + json.dumps({"rows": rows, "bare_encode_s": bare}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
