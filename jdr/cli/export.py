"""`jdr export`: a training workdir's encoder as HF + sentence-transformers dirs."""

from __future__ import annotations

from jdr.cli.common import dim_arg, parse_step


def add_arguments(p):
    p.add_argument("--workdir", required=True, help="`jdr train` workdir")
    p.add_argument(
        "--output",
        required=True,
        help="HF + sentence-transformers model dir to write (untied towers: OUTPUT/query, OUTPUT/passage)",
    )
    p.add_argument("--step", type=parse_step, default=None, help="checkpoint: a step, 'latest' (default) or 'best'")
    dim_arg(p)
    p.add_argument(
        "--tower",
        choices=("query", "passage"),
        default=None,
        help="export only this tower of an untied encoder (default: both)",
    )


def run(args) -> int:
    from jdr.models.cross_encoder_hf import export_cross_encoder, is_cross_encoder, load_cross_workdir
    from jdr.models.encoder import with_truncation
    from jdr.models.hf import export, export_encoder
    from jdr.models.workdir import load_workdir

    if is_cross_encoder(args.workdir):  # a `train.objective=cross_encoder` workdir: an HF *ForSequenceClassification
        params, spec, _, step = load_cross_workdir(args.workdir, step=args.step)
        export_cross_encoder(params, spec, args.workdir, args.output)
        print(f"exported cross-encoder step {step} to {args.output} (pairs of {spec.max_length} tokens)")
        return 0
    params, spec, tokenizer, step = load_workdir(args.workdir, step=args.step)
    spec = with_truncation(params, spec, args.truncate_dim)  # recorded in jdr_encoder.json: ST's truncate_dim
    source = args.workdir  # its encoder/ holds the tokenizer files
    if args.tower and not spec.tied:
        written = [export(params, spec, source, args.output, tower=args.tower)]
    else:
        written = export_encoder(params, spec, source, args.output)
    print(
        f"exported step {step} to {', '.join(map(str, written))} (query {spec.query_max_length} / passage "
        f"{spec.passage_max_length} tokens)"
    )
    return 0
