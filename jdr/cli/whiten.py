"""`jdr whiten`: fit whitening (`jdr.models.whitening`) on a corpus's embeddings and export the model with it as a
sentence-transformers Dense + Normalize, so the dir loads in jdr and in sentence-transformers alike."""

from __future__ import annotations

import json


def add_arguments(p):
    from jdr.cli.common import model_args

    model_args(p)
    p.add_argument("--data", required=True, help="BEIR dataset dir or name whose corpus the whitening is fit on")
    p.add_argument("--output", required=True, help="HF + sentence-transformers model dir to write (Dense module)")
    p.add_argument("--dim", type=int, default=None, help="keep the k leading whitened directions (default: all)")
    p.add_argument("--eps", type=float, default=1e-8, help="added to the covariance spectrum before 1/sqrt")
    p.add_argument("--sample", type=int, default=0, help="fit on N seeded random docs (0 = the whole corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--embeddings",
        default=None,
        help="fit on this `jdr encode` store of the corpus (same model, passage tower) instead of encoding",
    )
    p.add_argument("--max-length", type=int, default=None, help="passage token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    import numpy as np

    from jdr.cli.common import load_model
    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.index.store import load_embeddings
    from jdr.models.hf import export
    from jdr.models.inference import encode_texts
    from jdr.models.whitening import add_whitening, fit_whitening
    from jdr.run_info import write_run_record

    corpus = load_corpus(resolve_dataset(args.data) / "corpus.jsonl")
    params, spec, tok = load_model(args)
    rows = np.arange(len(corpus.ids))
    if 0 < args.sample < len(rows):
        rows = np.sort(np.random.default_rng(args.seed).choice(rows, args.sample, replace=False))
    if args.embeddings:
        emb, ids = load_embeddings(args.embeddings)
        index = {d: i for i, d in enumerate(ids)}
        missing = [corpus.ids[r] for r in rows if corpus.ids[r] not in index]
        if missing:
            raise ValueError(f"{args.embeddings}: no embedding for doc {missing[0]!r} ({len(missing)} missing)")
        emb = np.asarray(emb)[[index[corpus.ids[r]] for r in rows]]
    else:
        passages = corpus.passages()
        emb = encode_texts(
            params,
            spec,
            tok,
            [passages[r] for r in rows],
            tower="passage",
            max_length=args.max_length,
            batch_size=args.batch_size,
        )
    whitening = fit_whitening(emb, dim=args.dim, eps=args.eps)
    params, spec = add_whitening(params, spec, whitening)
    export(params, spec, tok, args.output)
    summary = {
        "output": str(args.output),
        "fit_docs": int(len(rows)),
        "dim_in": int(whitening.kernel.shape[0]),
        "dim_out": int(whitening.kernel.shape[1]),
        "eps": args.eps,
        "top_singular_values": [float(v) for v in whitening.singular_values[:5]],
    }
    write_run_record(
        args.output,
        {k: v for k, v in vars(args).items() if not k.startswith("_")},
        args.seed,
        name="whitening.json",
        **summary,
    )
    print(json.dumps(summary))
    return 0
