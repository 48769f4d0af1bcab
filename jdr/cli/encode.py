"""`jdr encode`: embed a corpus / queries file into an embedding store."""

from __future__ import annotations

from jdr.cli.common import dim_arg, load_model, model_args


def add_arguments(p):
    dim_arg(p)
    model_args(p)
    p.add_argument("--input", required=True, help="BEIR corpus.jsonl or queries.jsonl")
    p.add_argument("--output", required=True, help="embedding store dir (embeddings.npy, ids.txt, meta.json)")
    p.add_argument("--tower", choices=("query", "passage"), default="passage")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--pack",
        action="store_true",
        help="several short texts per row (same embeddings, less padding computed: jdr.models.packing)",
    )


def run(args) -> int:
    from jdr.data.beir import load_corpus
    from jdr.index.store import save_embeddings
    from jdr.models.inference import encode_texts

    docs = load_corpus(args.input)  # a queries.jsonl reads as a corpus with empty titles
    params, spec, tok = load_model(args)
    emb = encode_texts(
        params,
        spec,
        tok,
        docs.passages(),
        tower=args.tower,
        max_length=args.max_length,
        batch_size=args.batch_size,
        pack=args.pack,
    )
    save_embeddings(args.output, emb, docs.ids, model=str(args.model), tower=args.tower)
    print(f"wrote {len(docs.ids)} x {emb.shape[1]} embeddings to {args.output}")
    return 0
