"""The model being trained as embedders of a labelled source's corpus and queries: `dense_encoders` (texts;
start-of-run `memory` mining) and `token_encoders` (the token stores a built source holds; the ANCE refresh)."""

from __future__ import annotations

import numpy as np

from jdr.data.labeled import LabeledData, LabeledSource


def dense_encoders(data: LabeledData, spec, tokenizer, *, batch_size: int, sharded: bool):
    """`(encode_corpus(params) -> [N, d], encode_queries(params, qids) -> [len(qids), d])` over `data`'s corpus
    (row order) and queries with the passage / query tower: what mining with the model being trained embeds.
    `sharded`: hosts split the corpus and all-gather (`encode_sharded`); never from a background thread, where the
    collective could interleave with the train step's."""
    from jdr.distributed import encode_sharded
    from jdr.models.inference import encode_texts

    kw = dict(batch_size=batch_size, progress=False)

    def encode_corpus(params):
        def local(texts):
            return encode_texts(params, spec, tokenizer, texts, tower="passage", **kw)

        passages = data.corpus.passages()
        return encode_sharded(local, passages) if sharded else local(passages)

    def encode_queries(params, qids):
        return encode_texts(params, spec, tokenizer, [data.queries[q] for q in qids], tower="query", **kw)

    return encode_corpus, encode_queries


def token_encoders(source: LabeledSource, spec, *, batch_size: int, sharded: bool, progress: bool = False):
    """`dense_encoders` over a built source's token stores: the corpus rows and training queries it tokenised once
    (`PretokenizedTexts.ragged` -> `encode_token_ids`), so an ANCE refresh never re-tokenises. Augmentation
    passages the store holds after the corpus (memory negatives) are not encoded: their memories are fixed.
    `progress`: a tqdm bar per encode ("refresh: passage", "refresh: query")."""
    from jdr.distributed import encode_sharded
    from jdr.models.inference import encode_token_ids

    passages, queries = source.passage_tokens, source.query_tokens

    def encode_rows(params, store, rows, tower):
        tokens, offsets = store.ragged(rows)
        return encode_token_ids(
            params,
            spec,
            tokens,
            offsets,
            tower=tower,
            pad_token_id=store.pad_id,
            max_length=store.max_length,
            batch_size=batch_size,
            progress=progress,
            desc=f"refresh: {tower}",
        )

    def encode_corpus(params):
        def local(rows):
            return encode_rows(params, passages, rows, "passage")

        rows = np.arange(len(source.data.corpus))
        return encode_sharded(local, rows) if sharded else local(rows)

    def encode_queries(params, qids):
        return encode_rows(params, queries, queries.rows(qids, "query"), "query")

    return encode_corpus, encode_queries
