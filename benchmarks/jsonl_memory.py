"""Memory and time of loading a 1 M-line Tevatron JSONL training file into the training source.

    python benchmarks/jsonl_memory.py generate --out /tmp/jdr_1m.jsonl          # ~3 GB, never in the repo
    python benchmarks/jsonl_memory.py measure --file /tmp/jdr_1m.jsonl --out benchmarks/results/jsonl_memory
    python benchmarks/jsonl_memory.py measure --file ... --jdr-root /tmp/jdr_before --label before   # another tree

The file is realistic in shape: 1 M queries of ~10 words, each line 1 positive + 8 negatives drawn from a pool
of 1.5 M passages of ~50 words (words from all-MiniLM-L6-v2's vocabulary, so ~1 token a word), so every
passage appears ~6 times and de-duplication matters.

`measure` runs each measurement in a fresh child process (peak RSS = the child's `ru_maxrss`; current RSS from
psutil after each stage): import + tokenizer (baseline), `load_tevatron` (stage `load`), the training source as
`jdr train` builds it — `jdr.train.sources.labeled_source`: dev split, `file` negatives table, tokenised stores
(stage `source`) — and 100 global batches of 32 (stage `batches`). Results go to OUT.json / OUT.md (appended
per label, so a before/after pair lands in one file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jdr.run_info import cpu_model  # noqa: E402  (one definition: jdr/run_info.py)


def _vocab_words() -> list[str]:
    from jdr.models.hf import find_minilm

    words = [
        w for w in (find_minilm() / "vocab.txt").read_text().split("\n") if w.isalpha() and w.isascii() and len(w) > 2
    ]
    return words


def generate(out: Path, lines: int, pool: int, seed: int) -> dict:
    """Write the synthetic file (see the module docstring) atomically; returns its facts."""
    from jdr.io import atomic_write

    rng = np.random.default_rng(seed)
    words = np.asarray(_vocab_words())
    t0 = time.perf_counter()
    lengths = rng.integers(40, 61, size=pool)
    texts = []
    for start in range(0, pool, 100_000):
        n = min(100_000, pool - start)
        flat = words[rng.integers(0, len(words), size=int(lengths[start : start + n].sum()))]
        cuts = np.cumsum(lengths[start : start + n])[:-1]
        texts.extend(" ".join(w) for w in np.split(flat, cuts))
    print(f"pool of {pool} passages in {time.perf_counter() - t0:.0f} s", flush=True)
    passages = [json.dumps({"docid": f"p{i}", "title": "", "text": t}) for i, t in enumerate(texts)]
    del texts
    with atomic_write(out, encoding="utf-8") as f:
        for start in range(0, lines, 100_000):
            n = min(100_000, lines - start)
            picks = rng.integers(0, pool, size=(n, 9))
            qlen = rng.integers(6, 15, size=n)
            qwords = words[rng.integers(0, len(words), size=int(qlen.sum()))]
            queries = np.split(qwords, np.cumsum(qlen)[:-1])
            for j in range(n):
                p = picks[j]
                negs = [x for x in p[1:] if x != p[0]]
                f.write(
                    f'{{"query_id": "q{start + j}", "query": {json.dumps(" ".join(queries[j]))}, '
                    f'"positive_passages": [{passages[p[0]]}], '
                    f'"negative_passages": [{", ".join(passages[x] for x in negs)}]}}\n'
                )
            print(f"{start + n} lines, {time.perf_counter() - t0:.0f} s", flush=True)
    return {"lines": lines, "pool": pool, "bytes": out.stat().st_size, "seconds": time.perf_counter() - t0}


def child(path: str) -> None:
    """One measurement (run in a fresh process): prints a JSON line of stages."""
    import resource
    from types import SimpleNamespace

    import psutil

    from jdr.config import load_config
    from jdr.data.tevatron import load_tevatron
    from jdr.models.hf import find_minilm
    from jdr.models.tokenize import load_tokenizer
    from jdr.train.sources import labeled_source

    proc = psutil.Process()
    stages = []

    def mark(name, t0, **extra):
        stages.append(
            {
                "stage": name,
                "seconds": time.perf_counter() - t0,
                "rss": proc.memory_info().rss,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                **extra,
            }
        )
        print(json.dumps(stages[-1]), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(find_minilm())
    mark("baseline", t0)
    t0 = time.perf_counter()
    data = load_tevatron(path)
    mark("load", t0, passages=len(data.corpus), queries=len(data.queries))
    cfg = load_config(None, ["negatives.source=file", "negatives.num=1", "negatives.depth=200", "data.dev_queries=0"])
    spec = SimpleNamespace(query_max_length=64, passage_max_length=256)
    t0 = time.perf_counter()
    source, _ = labeled_source(data, cfg, tokenizer, spec, global_batch_size=32, n_dev=0)
    mark(
        "source",
        t0,
        passage_tokens=int(len(source.passage_tokens.tokens)),
        query_tokens=int(len(source.query_tokens.tokens)),
    )
    t0 = time.perf_counter()
    for _ in range(100):
        source.next_batch()
    mark("batches", t0)
    print(json.dumps({"stages": stages, "passages": len(data.corpus), "queries": len(data.queries)}))


def measure(path: Path, out: Path, label: str, jdr_root: str | None, note: str = "") -> dict:
    env = dict(os.environ)
    root = jdr_root or str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, "child", "--file", str(path)], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = result["queries"]
    base = result["stages"][0]["rss"]
    peak = max(s["peak_rss"] for s in result["stages"])
    result.update(
        label=label,
        note=note,
        jdr_root=root,
        file=str(path),
        file_bytes=path.stat().st_size,
        cpu=cpu_model(),
        conditions="shared 2-core machine under load (other jobs running): times are not results",
        peak_above_baseline=peak - base,
        bytes_per_line=(peak - base) / lines,
        bytes_per_passage=(peak - base) / result["passages"],
    )
    runs = json.loads(out.with_suffix(".json").read_text())["runs"] if out.with_suffix(".json").exists() else []
    runs = [r for r in runs if r["label"] != label] + [result]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    out.with_suffix(".md").write_text(render(runs))
    return result


def render(runs: list[dict]) -> str:
    gb = 2**30
    r0 = runs[-1]
    lines = [
        "# Tevatron JSONL: memory of a 1 M-line file",
        "",
        f"File: {r0['queries']:,} lines ({r0['file_bytes'] / gb:.2f} GiB), {r0['passages']:,} unique passages "
        f"(1 positive + 8 negatives a line from a pool of 1.5 M, ~50 words each), queries of ~10 words; "
        f"all-MiniLM-L6-v2 tokenizer, passages at 256 tokens, queries at 64. CPU: {r0['cpu']}, "
        f"{r0['conditions']}. Generated by `benchmarks/jsonl_memory.py`.",
        "",
        "| code | stage | seconds | RSS after (GiB) | peak RSS so far (GiB) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        for s in r["stages"]:
            lines.append(
                f"| {r['label']} | {s['stage']} | {s['seconds']:.0f} | {s['rss'] / gb:.2f} | {s['peak_rss'] / gb:.2f} |"
            )
    lines += [""] + [f"`{r['label']}`: {r['note']}" + "  " for r in runs if r.get("note")]
    lines += ["", "| code | peak above baseline (GiB) | bytes / line | bytes / unique passage |", "|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['label']} | {r['peak_above_baseline'] / gb:.2f} | {r['bytes_per_line']:.0f} | "
            f"{r['bytes_per_passage']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", default="/tmp/jdr_1m.jsonl")
    g.add_argument("--lines", type=int, default=1_000_000)
    g.add_argument("--pool", type=int, default=1_500_000)
    g.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure")
    m.add_argument("--file", default="/tmp/jdr_1m.jsonl")
    m.add_argument("--out", default="benchmarks/results/jsonl_memory")
    m.add_argument("--label", default="this tree")
    m.add_argument("--jdr-root", default=None, help="import jdr from this tree instead (a before/after pair)")
    m.add_argument("--note", default="", help="what the measured code is (printed under the table)")
    c = sub.add_parser("child")
    c.add_argument("--file", required=True)
    args = ap.parse_args()
    if args.cmd == "generate":
        print(json.dumps(generate(Path(args.out), args.lines, args.pool, args.seed)))
    elif args.cmd == "measure":
        r = measure(Path(args.file), Path(args.out), args.label, args.jdr_root, args.note)
        print(json.dumps({k: v for k, v in r.items() if k != "stages"}))
    else:
        child(args.file)


if __name__ == "__main__":
    main()
