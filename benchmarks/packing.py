"""Sequence packing on a real corpus: tokens and FLOPs computed packed vs padded-bucketed, packed == unpacked
embeddings with the real model, and (optionally) an interleaved timing of both.

1. Cost (no model run): the corpus' token lengths at `--max-length` (all-MiniLM-L6-v2's tokenizer), then
   `jdr.models.packing.packing_cost` at `--batch`: tokens computed and forward FLOPs (dense layers + attention,
   MiniLM-L6's shape) of sorted + bucketed padding (what `encode_texts` does) vs packing into rows.
2. Equality: the first `--check-docs` passages (plus the shortest ones, so rows really hold several texts)
   encoded both ways with all-MiniLM-L6-v2 in float32: max |difference| and min cosine.
3. `--timed N`: N interleaved rounds (plain, packed, plain, packed, ...) of encoding `--time-docs` passages,
   each in its own process; docs/s per round and the median ratio.

    python benchmarks/packing.py                               # cost + equality (a minute)
    python benchmarks/packing.py --timed 3 --time-docs 1024    # + timing (idle machine)

Writes benchmarks/results/packing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from _common import RESULTS, cpu_model


def corpus_texts(data: str | None) -> list[str]:
    from jdr.data.beir import load_corpus, resolve_dataset

    corpus = load_corpus(resolve_dataset(data or "scifact") / "corpus.jsonl")
    return corpus.passages()


def query_texts(data: str | None) -> list[str]:
    from jdr.data.beir import resolve_dataset

    path = resolve_dataset(data or "scifact") / "queries.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def other_costs(args, texts) -> list[dict]:
    """packed / bucketed FLOPs for the corpus at twice the length and the queries at 64 tokens."""
    from jdr.models import hf
    from jdr.models.packing import packing_cost
    from jdr.models.tokenize import token_ids

    _, _, tok = hf.load(hf.find_minilm(), passage_max_length=512)
    out = []
    for name, items, max_length in (
        ("passages", texts, min(2 * args.max_length, 512)),
        ("queries", query_texts(args.data), 64),
    ):
        lengths = np.array([len(s) for s in token_ids(tok, items, max_length)])
        c = packing_cost(lengths, max_length, args.batch)
        out.append(
            {
                "what": name,
                "max_length": max_length,
                "median_length": float(np.median(lengths)),
                "bucketed_over_alone": c["bucketed_flops"] / c["real_flops_alone"],
                "packed_over_bucketed": c["packed_flops"] / c["bucketed_flops"],
            }
        )
    return out


def cost(args, texts) -> dict:
    from jdr.models import hf
    from jdr.models.packing import packing_cost
    from jdr.models.tokenize import token_ids

    _, spec, tok = hf.load(hf.find_minilm(), passage_max_length=args.max_length)
    lengths = np.array([len(s) for s in token_ids(tok, texts, args.max_length)])
    c = packing_cost(
        lengths,
        args.max_length,
        args.batch,
        hidden=spec.bert.hidden_size,
        intermediate=spec.bert.intermediate_size,
        layers=spec.bert.num_hidden_layers,
    )
    c["length_percentiles"] = {str(p): float(np.percentile(lengths, p)) for p in (5, 25, 50, 75, 95)}
    c["at_max_length"] = int((lengths == args.max_length).sum())
    return c


def equality(args, texts) -> dict:
    from jdr.models import hf
    from jdr.models.inference import encode_texts
    from jdr.models.tokenize import token_ids

    params, spec, tok = hf.load(hf.find_minilm(), passage_max_length=args.max_length)
    lengths = np.array([len(s) for s in token_ids(tok, texts, args.max_length)])
    pick = np.unique(np.concatenate([np.arange(args.check_docs), np.argsort(lengths)[: args.check_docs]]))
    sample = [texts[i] for i in pick]
    kw = dict(tower="passage", max_length=args.max_length, batch_size=args.batch, progress=False)
    plain = encode_texts(params, spec, tok, sample, **kw)
    packed = encode_texts(params, spec, tok, sample, pack=True, **kw)
    cos = np.sum(plain * packed, axis=1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(packed, axis=1)
    return {"texts": len(sample), "max_abs_diff": float(np.abs(plain - packed).max()), "min_cosine": float(cos.min())}


def child(args) -> dict:
    from jdr.models import hf
    from jdr.models.inference import encode_texts

    params, spec, tok = hf.load(hf.find_minilm(), passage_max_length=args.max_length)
    texts = corpus_texts(args.data)[: args.time_docs]
    kw = dict(
        tower="passage", max_length=args.max_length, batch_size=args.batch, progress=False, pack=args.child == "packed"
    )
    encode_texts(params, spec, tok, texts, **kw)  # compile
    start = time.perf_counter()
    encode_texts(params, spec, tok, texts, **kw)
    return {"docs_per_s": len(texts) / (time.perf_counter() - start)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="BEIR dir or name (default scifact)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--check-docs", type=int, default=32, help="equality check: first N + N shortest passages")
    ap.add_argument("--timed", type=int, default=0, help="interleaved timing rounds (0: none)")
    ap.add_argument("--time-docs", type=int, default=512, help="passages per timed encode")
    ap.add_argument("--note", default="")
    ap.add_argument("--child", choices=("plain", "packed"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    texts = corpus_texts(args.data)
    result = {
        "cpu": cpu_model(),
        "command": "python benchmarks/packing.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "cost": cost(args, texts),
        "other": other_costs(args, texts),
        "equality": equality(args, texts),
        "rounds": [],
    }
    argv = [f"--max-length={args.max_length}", f"--batch={args.batch}", f"--time-docs={args.time_docs}"] + (
        [f"--data={args.data}"] if args.data else []
    )
    for i in range(args.timed):
        rnd = {}
        for side in ("plain", "packed"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", side, *argv], check=True, capture_output=True, text=True
            )
            rnd[side] = json.loads(out.stdout.strip().splitlines()[-1])["docs_per_s"]
        result["rounds"].append(rnd)
        print(f"round {i}: plain {rnd['plain']:.1f} docs/s, packed {rnd['packed']:.1f} docs/s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "packing.json").write_text(json.dumps(result, indent=2) + "\n")
    c, e = result["cost"], result["equality"]
    lines = [
        "# Sequence packing for inference (`encode_texts(pack=True)`, `jdr encode --pack`)",
        "",
        f"CPU: {result['cpu']}. Command: `{result['command']}`." + (f" {args.note}" if args.note else ""),
        "",
        f"Corpus: {c['texts']} passages at max length {args.max_length} (all-MiniLM-L6-v2 tokenizer); length "
        f"percentiles 5/25/50/75/95: {', '.join(f'{v:.0f}' for v in c['length_percentiles'].values())}; "
        f"{c['at_max_length']} cut at {args.max_length}. Batch {args.batch}.",
        "",
        "| | tokens computed | x real tokens | forward GFLOP (dense + attention) | x FLOPs of each text alone |",
        "|---|---|---|---|---|",
        f"| each text alone, no padding | {c['real_tokens']} | 1.00 | {c['real_flops_alone'] / 1e9:.0f} | 1.00 |",
        f"| sorted + bucketed padding (default) | {c['bucketed_tokens']} "
        f"| {c['bucketed_tokens'] / c['real_tokens']:.3f} "
        f"| {c['bucketed_flops'] / 1e9:.0f} | {c['bucketed_flops'] / c['real_flops_alone']:.3f} |",
        f"| packed ({c['packed_rows']} rows) | {c['packed_tokens']} | {c['packed_tokens'] / c['real_tokens']:.3f} | "
        f"{c['packed_flops'] / 1e9:.0f} | {c['packed_flops'] / c['real_flops_alone']:.3f} |",
        "",
        f"Packed attention spans the whole row (masked scores are computed), so packing's FLOPs count each text's "
        f"attention at the row length. Packed / bucketed FLOPs: **{c['packed_flops'] / c['bucketed_flops']:.3f}**.",
        "",
        "Other length distributions (same batch):",
        "",
        "| texts | max length | median length | bucketed / each alone FLOPs | packed / bucketed FLOPs |",
        "|---|---|---|---|---|",
        *(
            f"| {o['what']} | {o['max_length']} | {o['median_length']:.0f} | {o['bucketed_over_alone']:.3f} | "
            f"{o['packed_over_bucketed']:.3f} |"
            for o in result["other"]
        ),
        "",
        f"Equality (float32, {e['texts']} passages incl. the shortest): max |packed - plain| = "
        f"{e['max_abs_diff']:.2e}, min cosine {e['min_cosine']:.7f}.",
    ]
    if result["rounds"]:
        ratio = statistics.median(r["packed"] / r["plain"] for r in result["rounds"])
        lines += ["", "| round | plain docs/s | packed docs/s |", "|---|---|---|"]
        lines += [f"| {i} | {r['plain']:.1f} | {r['packed']:.1f} |" for i, r in enumerate(result["rounds"])]
        lines += ["", f"packed / plain = **{ratio:.2f}x** (median of rounds)."]
    (RESULTS / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
