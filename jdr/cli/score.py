"""`jdr score`: a cross-encoder's `score` on every passage of Tevatron JSONL groups (teacher scores for
distillation: `data.source=jsonl` with a `distill.loss`)."""

from __future__ import annotations

import json

from jdr.cli.rerank import cross_encoder_args, load_cross_encoder_arg


def add_arguments(p):
    cross_encoder_args(p)
    p.add_argument("--input", required=True, help="Tevatron JSONL groups (e.g. from `jdr mine`)")
    p.add_argument(
        "--output",
        required=True,
        help="scored JSONL (atomically; chunks kept in OUTPUT.parts/ until done, so a rerun resumes)",
    )
    p.add_argument("--chunk", type=int, default=10000, help="records scored and saved per chunk")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from jdr.rerank import count_groups, score_jsonl

    count_groups(args.input)  # bad input is one line before the model loads or compiles
    params, spec, tok = load_cross_encoder_arg(args)
    summary = score_jsonl(params, spec, tok, args.input, args.output, chunk=args.chunk, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({**summary, "output": str(args.output)}))
    else:
        print(
            f"scored {summary['records']} groups into {args.output} ({summary['resumed']} of "
            f"{summary['chunks']} chunks resumed)"
        )
    return 0
