"""`jdr index`: a faiss (index_factory), quantized (int8 / binary) or SPANN index over an embedding store; prints
its memory and bytes per document."""

from __future__ import annotations

from pathlib import Path

from jdr.cli.common import ids_path


def add_arguments(p):
    p.add_argument("--embeddings", required=True, help="embedding store dir written by `jdr encode`")
    p.add_argument(
        "--factory",
        default=None,
        help='faiss factory string, e.g. "Flat" (default), "IVF1024,PQ32", "HNSW32"; not with --spann',
    )
    p.add_argument("--output", required=True, help="index file; doc ids go to OUTPUT.ids.txt")
    p.add_argument(
        "--train-sample",
        type=int,
        default=None,
        help="rows to train on; with --quantize, the int8 calibration rows (default: all); not with --spann",
    )
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("quantized (instead of --factory; OUTPUT becomes a directory)")
    g.add_argument(
        "--quantize",
        choices=("int8", "binary"),
        default=None,
        help="int8: per-dimension ranges calibrated on the corpus (faiss SQ8); binary: sign bits, "
        "Hamming search (faiss IndexBinaryFlat)",
    )
    g.add_argument(
        "--rescore-vectors",
        choices=("int8", "float", "none"),
        default=None,
        help="document vectors kept for `jdr search --rescore` (default: int8 for binary, none for int8)",
    )
    g = p.add_argument_group("SPANN (instead of --factory; OUTPUT becomes a directory)")
    g.add_argument("--spann", action="store_true", help="build a SPANN index: heads in RAM, posting lists on disk")
    g.add_argument("--list-size", type=int, default=1000, help="max vectors per head's cluster (balanced k-means)")
    g.add_argument(
        "--eps1", type=float, default=0.1, help="closure: also list x under c_j if d(x,c_j) <= (1+eps1) d(x,c_nearest)"
    )
    g.add_argument("--max-replicas", type=int, default=8, help="max posting lists per vector")
    g.add_argument(
        "--member-heads",
        action="store_true",
        help="heads = the data vector nearest each centroid (SPTAG), not the centroid itself",
    )


def run(args) -> int:
    from jdr.index.faiss_index import build_index, save_index
    from jdr.index.quantized import QuantizedIndex
    from jdr.index.spann import build_spann
    from jdr.index.store import load_embeddings
    from jdr.io import atomic_write

    if args.spann:  # SPANN's k-means reads every vector and has no faiss factory: say so rather than ignore them
        given = [
            flag
            for flag, value in (("--factory", args.factory), ("--train-sample", args.train_sample))
            if value is not None
        ]
        if given:
            raise ValueError(
                f"jdr index --spann takes no {' / '.join(given)} (SPANN builds its own heads from "
                f"all vectors: see --list-size, --eps1, --max-replicas)"
            )
    if args.quantize and args.spann:
        raise ValueError("index: --quantize and --spann are different indexes; give one")
    if args.rescore_vectors and not args.quantize:
        raise ValueError("index: --rescore-vectors goes with --quantize")
    emb, ids = load_embeddings(args.embeddings)
    if args.quantize:
        index = QuantizedIndex.build(
            emb, args.quantize, keep=args.rescore_vectors, sample=args.train_sample, seed=args.seed
        )
        index.save(args.output)
        per_doc = index.bytes_per_doc()
        kind = f"{args.quantize} (rescoring vectors: {index.keep})"
        memory = (
            f"{per_doc['search']} B/doc searched, {per_doc['search'] * index.ntotal / 2**20:.1f} MiB; "
            f"+ {per_doc['rescore']} B/doc kept for rescoring, {per_doc['rescore'] * index.ntotal / 2**20:.1f} MiB"
        )
    elif args.spann:
        index = build_spann(
            emb,
            args.output,
            list_size=args.list_size,
            eps1=args.eps1,
            max_replicas=args.max_replicas,
            member_heads=args.member_heads,
            seed=args.seed,
        )
        kind = f"SPANN ({index.meta['heads']} heads, duplication {index.meta['stats']['duplication']:.2f})"
        mem = index.memory_bytes()
        memory = f"{mem['ram'] / 2**20:.1f} MiB in RAM, {mem['disk'] / 2**20:.1f} MiB on disk"
    else:
        kind = args.factory or "Flat"
        index = build_index(emb, kind, train_sample=args.train_sample, seed=args.seed)
        save_index(index, args.output)
        size = Path(args.output).stat().st_size  # what faiss.read_index loads into RAM
        memory = f"{size / max(index.ntotal, 1):.0f} B/doc, {size / 2**20:.1f} MiB in RAM (codes, ids, trained parts)"
    with atomic_write(ids_path(args.output)) as f:
        f.writelines(f"{i}\n" for i in ids)
    print(f"wrote {kind} index of {index.ntotal} vectors to {args.output}: {memory}")
    return 0
