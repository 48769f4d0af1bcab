"""Cross-encoder objective (monoBERT / Gao et al.'s localized contrastive estimation): the model is a cross-encoder
(`jdr.models.cross_encoder`) that reads each (query, passage) of a group as one pair and gives it a logit; the
loss compares the positive with its own group's hard negatives.

Batch (per device): the contrastive layout, `query_ids/query_mask [B, Lq]`, `passage_ids/passage_mask [B*G, Lp]`
(row i*G query i's positive). Pairs are joined on device (`join_pairs`: `[CLS] q [SEP] p [SEP]`, token types),
so sources, negatives (bm25 / file / hybrid of those), the loop, checkpoints and preemption are every run's.
No collective besides the step's gradient pmean: a query never scores another query's passages.

Config: `train.objective=cross_encoder`; `cross_encoder.loss` ("localized_contrastive": softmax over the group at
`cross_encoder.temperature`; "bce": each pair labelled 1 / 0); `negatives.num >= 1`; `model.path` a
cross-encoder dir / workdir, or a plain encoder (all-MiniLM-L6-v2) whose head starts fresh (seeded by `seed`);
`model.query_max_length` + `model.passage_max_length` - 1 <= the position table (the pair budget). Dense negatives
(`ann`, `memory`, the ANCE refresh) need a bi-encoder: mine them with `jdr mine --model` and train on the file.
Dev / test evaluation retrieve with embeddings, so `data.dev_queries=0` and `eval.final_test=False`: evaluate the
export with `jdr rerank` over a first-stage run, then `jdr evaluate` / `jdr compare`. The workdir is a model source
for `jdr rerank` / `jdr score`; `export/` is an HF `*ForSequenceClassification` dir that sentence-transformers'
`CrossEncoder` loads.
"""

from __future__ import annotations

import dataclasses

from jdr.losses_rerank import RERANK
from jdr.train.objectives.base import Objective, register


@register
class CrossEncoder(Objective):
    """`loss` a key of `jdr.losses_rerank.RERANK`; `temperature` divides the logits of localized_contrastive;
    `dropout`: the model's dropout during training; `seed`: a fresh head's init."""

    name = "cross_encoder"

    def __init__(
        self, loss: str = "localized_contrastive", *, temperature: float = 1.0, dropout: bool = True, seed: int = 0
    ):
        if loss not in RERANK:
            raise ValueError(f"cross_encoder.loss must be one of {', '.join(RERANK)}, got {loss!r}")
        self.loss_name, self.temperature, self.dropout, self.seed = loss, temperature, dropout, seed
        self.spec = self.sep_id = None

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        from jdr.train.sources import negative_counts

        counts = negative_counts(cfg)
        checks = [
            (
                cfg.cross_encoder.loss in RERANK,
                f"cross_encoder.loss must be one of {', '.join(RERANK)}, got {cfg.cross_encoder.loss!r}",
            ),
            (cfg.cross_encoder.temperature > 0, "cross_encoder.temperature must be > 0"),
            (
                not (cfg.model.query_prefix or cfg.model.passage_prefix),
                "model.query_prefix / model.passage_prefix: a cross-encoder's pairs take no prefixes (jdr rerank and "
                'jdr score apply none); set both to ""',
            ),
            (
                cfg.negatives.num >= 1 and counts,
                "train.objective=cross_encoder needs hard negatives: negatives.num >= 1 and a negatives.source",
            ),
            (
                not {"ann", "memory"} & set(counts) and not cfg.negatives.refresh_every,
                "train.objective=cross_encoder cannot mine dense negatives (ann, memory, the ANCE refresh): mine them "
                "with `jdr mine --model BI_ENCODER` and train on the file (data.source=jsonl, negatives.source=file)",
            ),
            (
                cfg.data.dev_queries == 0 and not cfg.eval.final_test,
                "train.objective=cross_encoder: set data.dev_queries=0 and eval.final_test=False (evaluation retrieves "
                "with embeddings; evaluate the export with `jdr rerank` over a first-stage run)",
            ),
            (not cfg.train.grad_cache_chunk, "train.grad_cache_chunk chunks embeddings; a cross-encoder has none"),
            (
                cfg.model.pooling is None and cfg.model.normalize is None,
                "model.pooling / model.normalize are dual-encoder settings; leave them unset for a cross-encoder",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_config(cls, cfg) -> CrossEncoder:
        return cls(
            cfg.cross_encoder.loss, temperature=cfg.cross_encoder.temperature, dropout=cfg.train.dropout, seed=cfg.seed
        )

    def load_model(self, cfg):
        from jdr.models.cross_encoder_hf import load_cross_encoder
        from jdr.models.resolve import model_path

        model_dir = model_path(cfg.model.path)
        params, spec, tok = load_cross_encoder(model_dir, dtype=cfg.model.dtype, seed=self.seed)
        q, p = cfg.model.query_max_length, cfg.model.passage_max_length
        self.spec = dataclasses.replace(
            spec, query_max_length=q, passage_max_length=p, max_length=min(q + p - 1, spec.bert.max_length)
        )
        # RoBERTa's pair template `<s> q </s></s> p </s>`: the passage's `<s>` becomes a `</s>`.
        self.sep_id = None if spec.head == "bert" else tok.token_to_id("</s>")
        return params, self.spec, tok, model_dir

    def save_description(self, workdir, spec, model_dir) -> None:
        from jdr.models.cross_encoder_hf import save_cross_description

        save_cross_description(workdir, spec, model_dir)

    def export(self, params, spec, model_dir, out_dir) -> None:
        from jdr.models.cross_encoder_hf import export_cross_encoder

        export_cross_encoder(params, spec, model_dir, out_dir)

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        from jdr.models.cross_encoder import join_pairs, score

        if self.spec is None:
            raise ValueError("cross-encoder objective: load_model was not called (the spec is unknown)")
        b, n = batch["query_ids"].shape[0], batch["passage_ids"].shape[0]
        ids, mask, types = join_pairs(
            batch["query_ids"], batch["query_mask"], batch["passage_ids"], batch["passage_mask"], sep_id=self.sep_id
        )
        logits = score(params, self.spec, ids, mask, types, deterministic=not self.dropout, rng=rng)
        kwargs = {"temperature": self.temperature} if self.loss_name == "localized_contrastive" else {}
        loss, aux = RERANK[self.loss_name](logits.reshape(b, n // b), **kwargs)
        return loss, aux, {}
