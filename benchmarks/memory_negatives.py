"""MoMA-style `memory` negatives on SciFact: train every row of configs/memory_exp/ (see its base.py for the design
and why it is a simulation), test each once on the FULL SciFact corpus, and write the table with `jdr compare`'s
significance marks.

  python benchmarks/memory_negatives.py --plan   # split the corpus (seconds), print the commands + estimate
  python benchmarks/memory_negatives.py          # + encode the augmentation memory, train and test every row
  python benchmarks/memory_negatives.py --augment-corpus /data/pubmed/corpus.jsonl   # a REAL augmentation corpus

Steps: (1) split SciFact's corpus (seeded): the training part (every document judged relevant to a training
query + `--fraction` of the others) as a BEIR dir, the rest as the augmentation corpus; (2) `jdr encode` the
augmentation corpus with all-MiniLM-L6-v2 at the training length (128) into an embedding store (the memory `aug`,
indexed Flat at the start of each run); (3) every row through benchmarks/ance_experiment.py's runner (train with
dev-chosen checkpoints, resumable; test once at 256 tokens), with its test data, BM25 reference and comparisons
over the full SciFact corpus instead of the training part.

With `--augment-corpus` the training corpus is the full SciFact and `aug` is that corpus (a BEIR corpus.jsonl,
e.g. biomedical abstracts): rows half (SciFact alone), merged and quota; no split.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import ance_experiment as runner  # noqa: E402

from jdr.compare import format_markdown  # noqa: E402
from jdr.config import to_dict  # noqa: E402
from jdr.io import atomic_dir, atomic_write  # noqa: E402

LABELS = {
    "half": "negatives from the training part alone",
    "merged": "training part + aug, merged ranking",
    "quota": "training part 100 + aug 100 candidates",
    "full": "full corpus as the training corpus (reference)",
    "released": "all-MiniLM-L6-v2 as released (no fine-tuning)",
}


def split_corpus(dataset: Path, train_dir: Path, aug_dir: Path, *, fraction: float, seed: int) -> dict:
    """Write the training part (BEIR dir: corpus, all queries, train qrels) and the augmentation corpus of
    `dataset` (see the module docstring) -> counts. The two parts are disjoint; every training positive is in
    the training part (so no augmentation document duplicates a positive: a false negative under another key)."""
    from jdr.data.beir import load_beir

    data = load_beir(dataset, "train")
    positives = {d for rels in data.qrels.values() for d, r in rels.items() if r > 0}
    others = np.asarray([d for d in data.corpus.ids if d not in positives])
    kept = set(others[np.random.default_rng(seed).random(len(others)) < fraction].tolist())
    lines = (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines(True)
    train, aug = [], []
    for line, doc in zip(lines, data.corpus.ids):  # load_corpus keeps file order, one document per line
        (train if doc in positives or doc in kept else aug).append(line)
    with atomic_dir(train_dir) as tmp:
        (tmp / "corpus.jsonl").write_text("".join(train), encoding="utf-8")
        (tmp / "queries.jsonl").write_text((dataset / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
        (tmp / "qrels").mkdir()
        (tmp / "qrels" / "train.tsv").write_text(
            (dataset / "qrels" / "train.tsv").read_text(encoding="utf-8"), encoding="utf-8"
        )
    aug_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(aug_dir / "corpus.jsonl") as f:
        f.write("".join(aug))
    return {"train_part": len(train), "aug": len(aug), "train_positives": len(positives)}


def encode_cmd(corpus: Path, store: Path) -> list[str]:
    return [
        "encode",
        "--model",
        "minilm",
        "--input",
        str(corpus),
        "--output",
        str(store),
        "--tower",
        "passage",
        "--max-length",
        "128",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        default="configs/memory_exp",
        help="dir of base.py + row overlays (run from the repo root: base.py's data paths are relative to it)",
    )
    p.add_argument("--root", default="runs/memory_experiment", help="workdirs of the rows and references")
    p.add_argument("--data", default="scifact", help="the dataset split for training and tested on in full")
    p.add_argument("--augment-corpus", default=None, help="a real augmentation corpus.jsonl instead of the split")
    p.add_argument("--fraction", type=float, default=0.5, help="share of non-positive docs kept in the training part")
    p.add_argument("--rows", default=None, help="comma-separated subset of the rows")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; per-query values averaged over them")
    p.add_argument("--epochs", type=float, default=None, help="budget: epochs per row (default: base.py's EPOCHS)")
    p.add_argument("--set", action="append", default=[], help="config override a.b=v for every row (repeatable)")
    p.add_argument("--eval-max-length", type=int, default=256, help="passage tokens of the test evaluation")
    p.add_argument("--released-model", default="minilm", help="reference row: model evaluated as is ('none': skip)")
    p.add_argument("--baseline", default="half", help="row the table tests against")
    p.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples")
    p.add_argument("--step-seconds", type=float, default=13.0, help="estimate: s/step at 32 x 2 x 256 passage tokens")
    p.add_argument("--encode-seconds", type=float, default=300.0, help="estimate: s per 5 183-doc encode at 256")
    p.add_argument("--plan", action="store_true", help="split, print the commands and the estimate; train nothing")
    p.add_argument("--out", default="benchmarks/results/memory_negatives", help="results path without extension")
    args = p.parse_args(argv)
    from jdr.data.beir import resolve_dataset

    spec = importlib.util.spec_from_file_location("memory_exp_base", Path(args.configs) / "base.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)  # its TRAIN_PART and AUG say where the rows read the data
    aug_dir = Path(base.AUG)
    dataset = resolve_dataset(args.data)
    if args.augment_corpus:  # a real second corpus: SciFact stays whole, `aug` is that corpus
        aug_corpus, store = Path(args.augment_corpus), aug_dir / "real_store"
        args.set += [f"data.dataset={args.data}", f"negatives.memories=aug={store},{aug_corpus}"]
        args.rows = args.rows or "half,merged,quota"
        split = {"aug": sum(1 for _ in open(aug_corpus, encoding="utf-8"))}
    else:
        aug_corpus, store = aug_dir / "corpus.jsonl", aug_dir / "store"
        split = split_corpus(dataset, Path(base.TRAIN_PART), aug_dir, fraction=args.fraction, seed=0)
    print(f"memory negatives: {json.dumps(split)}; augmentation memory {store}", flush=True)
    plan = runner.Plan(args)
    plan.data = str(dataset)  # test data, BM25 reference and comparisons: the full corpus
    print(f"  [aug] jdr {shlex.join(encode_cmd(aug_corpus, store))}")
    print(plan.describe(), flush=True)
    if args.plan:
        return 0
    if not (store / "embeddings.npy").is_file():
        runner.jdr(encode_cmd(aug_corpus, store), Path(args.root) / "aug.log")
    records = {row: [runner.run_row(plan, row, s) for s in plan.seeds] for row in plan.rows}
    runner.run_references(plan)
    runner.LABELS.update(LABELS)
    res = runner.build_results(plan, records)
    kind = (
        f"real augmentation corpus {aug_corpus}"
        if args.augment_corpus
        else "SIMULATION: the augmentation memory is a split of its own corpus"
    )
    md = [
        f"# Memory negatives on {args.data} ({kind})",
        "",
        f"Machine: {runner.cpu_model()}. Command: `python benchmarks/memory_negatives.py "
        f"{shlex.join(sys.argv[1:] if argv is None else argv)}`. Split: {json.dumps(split)}. {plan.epochs} epochs "
        f"= {plan.steps} steps; configs `{plan.config_dir}` (base.py: design). Test: the dev-chosen checkpoint, "
        f"once, on the full corpus at {args.eval_max_length} tokens.",
        "",
        format_markdown(res["main"], labels=res["labels"], extra=res["extra"]),
    ]
    out = Path(args.out)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write("\n".join(md) + "\n")
    with atomic_write(out.with_suffix(".json")) as f:
        json.dump(
            {
                "command": ["python", "benchmarks/memory_negatives.py", *(argv or sys.argv[1:])],
                "cpu": runner.cpu_model(),
                "split": split,
                "steps": plan.steps,
                "seeds": plan.seeds,
                "configs": {r: to_dict(c) for r, c in plan.cfgs.items()},
                "records": records,
                "comparison": res["main"].to_dict(),
            },
            f,
            indent=1,
        )
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
