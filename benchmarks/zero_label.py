"""The zero-label SciFact table (issue 23, queue item 1): every row of configs/scifact_selfsup.py's ROWS trained
with `jdr train` on SciFact's documents alone and tested once, the released model and whitening of the released
model as references, each against the released model with a paired test (`jdr.compare`).

  python benchmarks/zero_label.py --plan                 # rows and their commands; runs nothing
  python benchmarks/zero_label.py                        # all rows, resuming finished ones
  python benchmarks/zero_label.py --rows released,white256,crop

Rows, in order (each skipped when ROOT/<row>/row.json exists, so an interrupted queue resumes; `jdr train`
itself resumes a row from its last checkpoint):
- released / released_bf16: all-MiniLM-L6-v2 as released, corpus encoded at 256 tokens in float32 / bfloat16
  compute (the bfloat16 store's min cosine against float32 is recorded). The float32 corpus store is cached in
  `--cache` and reused by every row that needs the released model's corpus vectors.
- white384 / white256 / white128: whitening (`jdr.models.whitening`, what `jdr whiten --embeddings` exports)
  fitted on the cached float32 corpus vectors, applied to them and to the float32 query vectors. Identical to
  evaluating the `jdr whiten` export (an affine layer + L2 after the model), without re-encoding the corpus.
- crop, crop_bf16, then the other training rows: `jdr train --config configs/scifact_selfsup.py` + the row's
  overrides; the trainer tests the final model once (`eval.final_test`, 256 tokens). crop_bf16 is crop with
  `model.dtype=bfloat16`: if it is not significantly different from crop (paired test on every metric), the
  remaining training rows run in bfloat16 (`--dtype auto`, the default) and the table says so.
Results: benchmarks/results/zero_label.{json,md}, rewritten atomically after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jdr.compare import compare_scores, format_markdown  # noqa: E402
from jdr.config import load_config  # noqa: E402
from jdr.evaluate import TEST_RUN, per_query_metrics, read_trec_run, write_trec_run  # noqa: E402
from jdr.io import atomic_write  # noqa: E402
from jdr.run_info import cpu_model  # noqa: E402

CONFIG = REPO / "configs" / "scifact_selfsup.py"
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
REFERENCE_ROWS = ("released", "released_bf16", "white384", "white256", "white128")
LABELS = {
    "released": "all-MiniLM-L6-v2 as released (float32)",
    "released_bf16": "released, bfloat16 compute",
    "white384": "released + whitening, 384 dims",
    "white256": "released + whitening, 256 dims",
    "white128": "released + whitening, 128 dims",
    "crop": "crop (Contriever)",
    "crop_bf16": "crop, bfloat16 compute",
    "crop+moco": "crop + MoCo",
    "ict": "ICT (inverse cloze)",
    "ict+moco": "ICT + MoCo",
    "simcse": "SimCSE dropout",
    "mirror": "Mirror-BERT spans",
    "esimcse": "ESimCSE repetition",
    "title": "title / body",
    "bm25": "BM25 pseudo-queries",
}


def training_rows() -> dict[str, list[str]]:
    """The config's ROWS (row -> overrides), with crop's bfloat16 twin right after crop."""
    ns: dict = {}
    exec(compile(CONFIG.read_text(), str(CONFIG), "exec"), ns)
    rows = dict(ns["ROWS"])
    out = {"crop": rows.pop("crop"), "crop_bf16": ["model.dtype=bfloat16"]}
    out.update(rows)
    return out


def encode_store(path: Path, texts_ids, texts, tower: str, dtype: str, max_length: int):
    from jdr.index.store import load_embeddings, save_embeddings
    from jdr.models.hf import find_minilm, load
    from jdr.models.inference import encode_texts

    if not (path / "ids.txt").is_file():
        params, spec, tok = load(find_minilm(), dtype=dtype)
        emb = encode_texts(params, spec, tok, texts, tower=tower, max_length=max_length, batch_size=64)
        save_embeddings(path, emb, texts_ids, model="minilm", tower=tower)
    emb, ids = load_embeddings(path, mmap=False)
    assert ids == list(texts_ids), f"{path}: ids differ from the data's"
    return np.asarray(emb, np.float32)


def flat_run(q, qids, d, dids, k=1000):
    import faiss

    index = faiss.IndexFlatIP(d.shape[1])
    index.add(np.ascontiguousarray(d, np.float32))
    scores, rows = index.search(np.ascontiguousarray(q, np.float32), k)
    return {qid: {dids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for qid, rr, ss in zip(qids, rows, scores)}


def reference_row(row: str, args, data) -> dict:
    """Released model (float32 / bfloat16) and whitening rows from cached corpus vectors."""
    dtype = "bfloat16" if row == "released_bf16" else "float32"
    cache = Path(args.cache)
    corpus_ids = list(data.corpus.ids)
    docs = encode_store(
        cache / f"minilm_{'bf16' if dtype == 'bfloat16' else 'f32'}" / "corpus",
        corpus_ids,
        data.corpus.passages(),
        "passage",
        dtype,
        256,
    )
    qids = list(data.queries)
    queries = encode_store(
        cache / f"minilm_{'bf16' if dtype == 'bfloat16' else 'f32'}" / "test_queries",
        qids,
        [data.queries[q] for q in qids],
        "query",
        dtype,
        256,
    )
    extra = {}
    if row == "released_bf16":
        f32 = encode_store(
            cache / "minilm_f32" / "corpus", corpus_ids, data.corpus.passages(), "passage", "float32", 256
        )
        extra["min_cosine_vs_float32"] = float(np.min(np.sum(f32 * docs, axis=1)))
    if row.startswith("white"):
        from jdr.models.whitening import fit_whitening

        w = fit_whitening(docs, dim=int(row[len("white") :]))
        docs, queries = w(docs), w(queries)
    return {"run": flat_run(queries, qids, docs, corpus_ids), **extra}


def train_row(row: str, overrides: list[str], args, dtype_note: list[str]) -> dict:
    workdir = Path(args.root) / row
    cmd = [sys.executable, "-m", "jdr.cli", "train", "--config", str(CONFIG), "--workdir", str(workdir)]
    cmd += [f"--config.{o}" for o in overrides + dtype_note]
    log = Path(args.root) / f"{row}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if not (workdir / "final_metrics.json").is_file():  # a finished workdir (queue killed before row.json) is reused
        print("$", " ".join(cmd), flush=True)
        with open(log, "a") as f:
            subprocess.run(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                check=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
    timing = workdir / "timing.json"
    wall = json.loads(timing.read_text()).get("wall_seconds") if timing.is_file() else None
    return {
        "run": read_trec_run(workdir / TEST_RUN),
        "command": " ".join(cmd[2:]),
        "train_wall_s": wall,
        "final_metrics": json.loads((workdir / "final_metrics.json").read_text()),
    }


def per_query(qrels, run_file) -> dict[str, np.ndarray]:
    """Per-query values of a run, aligned over the judged queries (sorted ids), as `compare_scores` wants."""
    per = per_query_metrics(qrels, read_trec_run(run_file), ignore_identical_ids=True, metrics=METRICS)
    return {m: np.array([per[m][q] for q in sorted(per[m])]) for m in METRICS}


def load_done(root: Path) -> dict[str, dict]:
    done = {}
    for p in sorted(root.glob("*/row.json")):
        done[p.parent.name] = json.loads(p.read_text())
    return done


def bf16_decision(done: dict, qrels) -> str | None:
    """'bfloat16' when crop_bf16 is not significantly different from crop on any metric, 'float32' when it is,
    None before both rows exist."""
    if "crop" not in done or "crop_bf16" not in done:
        return None
    scores = {r: per_query(qrels, done[r]["run_file"]) for r in ("crop", "crop_bf16")}
    cmp = compare_scores(scores, baseline="crop", metrics=METRICS)
    sig = [m for r in cmp.runs for m in cmp.metrics if r.name == "crop_bf16" and r.metrics[m].get("significant")]
    return "float32" if sig else "bfloat16"


def write_tables(root: Path, qrels, order: list[str], out: Path, argv: list[str]) -> None:
    done = load_done(root)
    names = [r for r in order if r in done]
    if "released" not in done or len(names) < 2:
        return
    scores = {r: per_query(qrels, done[r]["run_file"]) for r in names}
    cmp = compare_scores(scores, baseline="released", metrics=METRICS)
    extra = {
        "precision": {r: done[r].get("precision", "") for r in names},
        "minutes (wall)": {r: f"{done[r]['minutes']:.1f}" for r in names},
    }
    decision = bf16_decision(done, qrels)
    lines = [
        "# Zero-label SciFact (issue 23, queue item 1)",
        "",
        f"CPU: {cpu_model()}. Minutes are wall time of the row on the shared 2-core machine (other work ran "
        "beside the queue: not timing results). SciFact test, 300 queries, 5 183 docs, passages at 256 tokens "
        "for evaluation. Training rows: `configs/scifact_selfsup.py` (100 steps x 32 pairs, in-batch "
        "negatives, InfoNCE t=0.05, AdamW 1e-5) + the row's overrides, no labels and no dev choices.",
        "",
        format_markdown(cmp, labels=LABELS, extra=extra),
        "",
    ]
    if decision:
        lines += [
            f"bfloat16 twin (crop vs crop_bf16): {'no' if decision == 'bfloat16' else 'a'} significant "
            f"difference on {', '.join(METRICS)} -> later training rows ran in {decision}.",
            "",
        ]

    def portable(text: str) -> str:  # commands as a user types them: `jdr`, paths from the checkout's root
        text = re.sub(r"\S*/(configs|runs|benchmarks|\.cache)/", r"\1/", text)
        return text.replace("jdr.cli train", "jdr train", 1)

    lines += ["Commands (each row):", ""] + [
        f"- {r}: `{portable(done[r].get('command', 'reference row: computed by the script from the cached store'))}`"
        for r in names
    ]
    lines += ["", f"Reproduce: `python {portable(' '.join(argv))}`"]
    with atomic_write(out.with_suffix(".md")) as f:
        f.write("\n".join(lines) + "\n")
    with atomic_write(out.with_suffix(".json")) as f:
        f.write(
            json.dumps(
                {
                    "cpu": cpu_model(),
                    "rows": {r: {k: v for k, v in done[r].items() if k != "run"} for r in names},
                    "comparison": cmp.to_dict(),
                    "bf16_decision": decision,
                },
                indent=2,
            )
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--root", default=str(REPO / "runs" / "zero_label"))
    ap.add_argument("--cache", default=str(REPO / ".cache" / "emb"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "zero_label"))
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="compute dtype of the training rows after crop/crop_bf16 (auto: the paired test decides)",
    )
    ap.add_argument("--plan", action="store_true")
    args = ap.parse_args(argv)
    from jdr.data.beir import load_beir, resolve_dataset

    rows = training_rows()
    order = list(REFERENCE_ROWS) + list(rows)
    if args.rows:
        unknown = set(args.rows.split(",")) - set(order)
        if unknown:
            raise SystemExit(f"--rows: unknown {sorted(unknown)}; have {order}")
        order = [r for r in order if r in args.rows.split(",")]
    for r in rows:  # every training row must be a valid config before anything runs
        load_config(str(CONFIG), rows[r])
    if args.plan:
        for r in order:
            print(r, rows.get(r, "(reference row)"))
        return 0
    root = Path(args.root)
    data = load_beir(resolve_dataset("scifact"), "test")
    for row in order:
        if (root / row / "row.json").is_file():
            continue
        t0 = time.time()
        if row in REFERENCE_ROWS:
            rec = reference_row(row, args, data)
            rec["precision"] = "bfloat16" if row == "released_bf16" else "float32"
        else:
            dtype = args.dtype
            if dtype == "auto":
                dtype = bf16_decision(load_done(root), data.qrels) or "float32"
            over = list(rows[row])
            if row not in ("crop", "crop_bf16") and dtype == "bfloat16":
                over.append("model.dtype=bfloat16")
            rec = train_row(row, over, args, [])
            rec["precision"] = "bfloat16" if "model.dtype=bfloat16" in over else "float32"
        rec["minutes"] = (rec.get("train_wall_s") or (time.time() - t0)) / 60  # train rows: the run's timing.json
        (root / row).mkdir(parents=True, exist_ok=True)
        run_file = root / row / "row_run.trec"
        write_trec_run(run_file, rec.pop("run"))
        rec["run_file"] = str(run_file)
        with atomic_write(root / row / "row.json") as f:
            f.write(json.dumps(rec, indent=2))
        write_tables(root, data.qrels, order, Path(args.out), ["benchmarks/zero_label.py"] + (argv or sys.argv[1:]))
        print(f"row {row} done in {rec['minutes']:.1f} min", flush=True)
    if load_done(root):  # also when every row was already done: the tables from the rows on disk
        write_tables(root, data.qrels, order, Path(args.out), ["benchmarks/zero_label.py"] + (argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
