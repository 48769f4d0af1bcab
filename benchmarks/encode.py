"""Encode throughput: jdr's `encode_texts` vs sentence-transformers' `SentenceTransformer.encode`, same CPU, same run.

Same model (all-MiniLM-L6-v2), same texts (the first `--docs` SciFact passages, title + text, cut at
`--max-length` tokens), same batch size. Each side runs in its own child process (so neither inherits the other's
thread pools or allocator state), alternating jdr / ST for `--repeats` rounds; each child encodes once to warm up
(jdr compiles its length buckets) and then times `--timed` full passes (steady state). Prints docs/s of both, the
ratio (median over rounds), jdr's achieved GFLOP/s (XLA's cost analysis of each compiled bucket x batches) against
a float32 matmul peak measured in the same run, the CPU model and each child's peak RSS; writes
benchmarks/results/encode.{json,md}.

    python benchmarks/encode.py                          # 512 docs, length 256, batch 64, 3 rounds
    python benchmarks/encode.py --docs 128 --repeats 1   # smoke run
    python benchmarks/encode.py --dtypes float32,bfloat16  # both dtypes, each against the peer in the same dtype

`--dtypes`: each round runs every dtype on both sides (jdr `dtype=bfloat16`: bfloat16 compute, float32
LayerNorm / softmax; sentence-transformers: the model cast to bfloat16), so each ratio compares like with like.

The peer needs torch and sentence-transformers (`pip install --no-deps -r benchmarks/requirements-bench.txt`,
or `--st-python` pointing at a venv that has them); without them only the jdr side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import RESULTS, cpu_model, matmul_peak, peak_rss_mib, run_child, side_env


def load_texts(data: str | None, n: int) -> list[str]:
    """The first `n` passages of the BEIR corpus `data` (a dir or a name: jdr.data.resolve_dataset)."""
    from jdr.data.beir import load_corpus, resolve_dataset

    corpus = load_corpus(resolve_dataset(data or "scifact") / "corpus.jsonl")
    return [corpus.passage(i) for i in range(min(n, len(corpus.ids)))]


def child_jdr(args) -> dict:
    """Time jdr's encode_texts; FLOPs from XLA's cost analysis of every bucket the texts use."""
    import dataclasses

    from jdr.malloc import tune_malloc

    tune_malloc()  # what the `jdr` command does first (acts only with JDR_MALLOC=heap)

    import jax
    import numpy as np

    from jdr.models import hf, inference
    from jdr.models.tokenize import bucket_length, token_ids

    params, spec, tok = hf.load(hf.find_minilm(), passage_max_length=args.max_length)
    if args.dtype != "float32":
        spec = dataclasses.replace(spec, dtype=args.dtype)
    texts = load_texts(args.data, args.docs)
    kw = dict(tower="passage", max_length=args.max_length, batch_size=args.batch, progress=False)
    inference.encode_texts(params, spec, tok, texts, **kw)  # compile every bucket
    times = []
    for _ in range(args.timed):
        start = time.perf_counter()
        inference.encode_texts(params, spec, tok, texts, **kw)
        times.append(time.perf_counter() - start)
    # FLOPs of one pass: per batch, the compiled bucket's cost.
    lengths = sorted((len(s) for s in token_ids(tok, texts, args.max_length)), reverse=True)
    fn, replicated, _ = inference._compiled(tuple(jax.local_devices()), spec, "query")
    placed = jax.device_put(params, replicated)
    rows = -(-args.batch // jax.local_device_count()) * jax.local_device_count()
    flops = 0.0
    for start in range(0, len(lengths), rows):
        shape = (rows, bucket_length(lengths[start], args.max_length))
        ids = np.zeros(shape, np.int32)
        cost = fn.lower(placed, ids, ids).compile().cost_analysis()
        flops += float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    seconds = statistics.median(times)
    return {
        "docs_per_s": len(texts) / seconds,
        "seconds": times,
        "flops_per_pass": flops,
        "gflop_per_s": flops / seconds / 1e9,
        "matmul_peak_gflop_per_s": matmul_peak() / 1e9,
        "peak_rss_mib": peak_rss_mib(),
        "devices": len(jax.local_devices()),
        "jax": jax.__version__,
    }


def st_model(max_length: int, dtype: str):
    """all-MiniLM-L6-v2 as the peer encodes with it: sentence-transformers on CPU, cut at `max_length` tokens;
    bfloat16: the whole model cast (torch's usual CPU path). Also used by `profile_ops.py`."""
    import torch
    from sentence_transformers import SentenceTransformer

    from jdr.models import hf

    model = SentenceTransformer(str(hf.find_minilm()), device="cpu")
    model.max_seq_length = max_length
    return model.to(torch.bfloat16) if dtype == "bfloat16" else model


def child_st(args) -> dict:
    """Time sentence-transformers' encode on the same texts (its own length sorting and batching)."""
    import torch

    model = st_model(args.max_length, args.dtype)
    kw = dict(batch_size=args.batch, convert_to_numpy=True, show_progress_bar=False)
    if args.dtype == "bfloat16":
        kw = dict(batch_size=args.batch, convert_to_tensor=True, show_progress_bar=False)
    texts = load_texts(args.data, args.docs)
    model.encode(texts, **kw)
    times = []
    for _ in range(args.timed):
        start = time.perf_counter()
        model.encode(texts, **kw)
        times.append(time.perf_counter() - start)
    return {
        "docs_per_s": len(texts) / statistics.median(times),
        "seconds": times,
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
    }


def write_results(result: dict) -> None:
    """benchmarks/results/encode.json and a readable encode.md (one table per dtype)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encode.json").write_text(json.dumps(result, indent=2) + "\n")
    a = result["args"]
    sections = result.get("by_dtype") or {a["dtype"]: result}
    lines = [
        "# Encode throughput: jdr vs sentence-transformers",
        "",
        f"CPU: {result['cpu']} ({os.cpu_count()} logical CPUs). {a['docs']} SciFact passages at length "
        f"{a['max_length']}, batch {a['batch']}, dtype{'s' if len(sections) > 1 else ''} {', '.join(sections)} "
        f"(both sides); each side in its own process, {a['repeats']} alternating rounds of {a['timed']} timed "
        f"passes after a warm-up pass.",
        f" jdr side: {result.get('env', {}).get('jdr', 'glibc, XLA defaults')}; peer: "
        f"{result.get('env', {}).get('peer', 'glibc')}.",
    ]
    for dtype, section in sections.items():
        lines += [""] + _table(section, dtype if len(sections) > 1 else None)
    (RESULTS / "encode.md").write_text("\n".join(lines) + "\n")


def _table(section: dict, dtype: str | None) -> list[str]:
    """One dtype's rounds as a markdown table and its median ratio."""
    lines = [f"## {dtype}", ""] if dtype else []
    lines += [
        "| round | jdr docs/s | ST docs/s | jdr / ST | jdr GFLOP/s | f32 matmul peak GFLOP/s "
        "| jdr peak RSS MiB | ST peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(section["rounds"]):
        j, s = r["jdr"], r.get("st")
        lines.append(
            f"| {i} | {j['docs_per_s']:.1f} | {s['docs_per_s']:.1f} | {j['docs_per_s'] / s['docs_per_s']:.2f} "
            if s
            else f"| {i} | {j['docs_per_s']:.1f} | — | — "
        )
        lines[-1] += (
            f"| {j['gflop_per_s']:.0f} | {j['matmul_peak_gflop_per_s']:.0f} | {j['peak_rss_mib']:.0f} | "
            f"{s['peak_rss_mib']:.0f} |"
            if s
            else f"| {j['gflop_per_s']:.0f} | {j['matmul_peak_gflop_per_s']:.0f} | {j['peak_rss_mib']:.0f} | — |"
        )
    if "jdr_over_st" in section:
        lines += ["", f"**jdr / sentence-transformers = {section['jdr_over_st']:.2f}x** (median of rounds)."]
    return lines


def main() -> None:
    """Parse flags; as the parent, alternate the two children and report; as a child, time one side."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="BEIR dir or name (default scifact)")
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (both sides)")
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma list (float32,bfloat16): every dtype each round, each against the peer's same dtype",
    )
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds (one child per side per round)")
    ap.add_argument("--timed", type=int, default=2, help="timed passes per child after one warm-up pass")
    ap.add_argument("--st-python", default=sys.executable, help="python with torch + sentence-transformers")
    ap.add_argument("--skip-st", action="store_true")
    ap.add_argument("--child", choices=("jdr", "st"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_jdr(args) if args.child == "jdr" else child_st(args)))
        return
    dtypes = args.dtypes.split(",") if args.dtypes else [args.dtype]
    if not set(dtypes) <= {"float32", "bfloat16"}:
        ap.error(f"--dtypes: {args.dtypes!r} (known: float32, bfloat16)")
    base = [
        f"--docs={args.docs}",
        f"--max-length={args.max_length}",
        f"--batch={args.batch}",
        f"--timed={args.timed}",
    ] + ([f"--data={args.data}"] if args.data else [])
    result = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "cpu": cpu_model(), "env": side_env()}
    sections = {d: {"rounds": []} for d in dtypes}
    for i in range(args.repeats):
        for dtype in dtypes:
            argv = base + [f"--dtype={dtype}"]
            rnd = {"jdr": run_child(sys.executable, __file__, "jdr", argv)}
            if not args.skip_st:
                try:
                    rnd["st"] = run_child(args.st_python, __file__, "st", argv)
                except subprocess.CalledProcessError as e:
                    result["st_skipped"] = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)
                    args.skip_st = True
            sections[dtype]["rounds"].append(rnd)
            print(
                f"round {i} {dtype}: jdr {rnd['jdr']['docs_per_s']:.1f} docs/s"
                + (f", sentence-transformers {rnd['st']['docs_per_s']:.1f} docs/s" if "st" in rnd else ""),
                flush=True,
            )
    for dtype, section in sections.items():
        rounds = section["rounds"]
        section["jdr_docs_per_s"] = statistics.median(r["jdr"]["docs_per_s"] for r in rounds)
        if all("st" in r for r in rounds):
            section["st_docs_per_s"] = statistics.median(r["st"]["docs_per_s"] for r in rounds)
            section["jdr_over_st"] = statistics.median(r["jdr"]["docs_per_s"] / r["st"]["docs_per_s"] for r in rounds)
        last = rounds[-1]["jdr"]
        print(
            f"{dtype}: jdr {section['jdr_docs_per_s']:.1f} docs/s ({last['gflop_per_s']:.0f} GFLOP/s of a "
            f"{last['matmul_peak_gflop_per_s']:.0f} GFLOP/s f32 matmul peak, peak RSS {last['peak_rss_mib']:.0f} MiB)"
            + (
                f"; sentence-transformers {section['st_docs_per_s']:.1f} docs/s (peak RSS "
                f"{rounds[-1]['st']['peak_rss_mib']:.0f} MiB); jdr / ST = {section['jdr_over_st']:.2f}x"
                if "jdr_over_st" in section
                else f"; sentence-transformers skipped: {result.get('st_skipped', '--skip-st')}"
            )
        )
    print(f"CPU: {result['cpu']}")
    if len(dtypes) == 1:
        result.update(sections[dtypes[0]])  # the single-dtype layout of encode.json, as before
    else:
        result["by_dtype"] = sections
    write_results(result)


if __name__ == "__main__":
    main()
