"""Contrastive objective (DPR / sentence-transformers MultipleNegativesRanking / Tevatron; EBR's triplets): each
query against its positive, its group's hard negatives and, for InfoNCE, every other passage of the global batch.

Batch (per device): int32 `query_ids[B,Lq]`, `query_mask[B,Lq]`, `passage_ids[B*G,Lp]`, `passage_mask[B*G,Lp]`
(row `i*G` the positive of query i, the next G-1 rows its hard negatives), optional bool
`false_negatives[B, columns]` (pairs the labels call relevant, kept out of the negatives; see
`jdr.losses.info_nce`). The group size G is read from the shapes.

Config: `train.loss` ("info_nce": `train.temperature`; "triplet": `train.margin`, needs `negatives.num >= 1`),
`train.cross_device_negatives` (all-gather passages over the data axis: global in-batch negatives),
`train.hard_in_batch_k` / `train.hard_in_batch_weight` (EBR's online hard negatives, hinge margin `train.margin`,
k at most the in-batch passages of other queries). Passages labelled relevant to a query are masked for every loss
that scores in-batch passages (InfoNCE, and triplet with hard_in_batch_k > 0) when `data.mask_false_negatives`.
Compose with GradCache (`train.grad_cache_chunk`): it only changes the encoder.
"""

from __future__ import annotations

import jax

from jdr.losses import CONTRASTIVE
from jdr.train.objectives.base import Objective, register


@register
class Contrastive(Objective):
    """`loss_name` a key of `jdr.losses.CONTRASTIVE`, `loss_kwargs` its keyword arguments other than `group_size`,
    `axis_name` and the mask; `cross_device_negatives`: gather passages over the step's axis."""

    name = "contrastive"

    def __init__(self, loss_name: str, loss_kwargs: dict, *, cross_device_negatives: bool = True):
        if loss_name not in CONTRASTIVE:
            raise ValueError(f"train.loss: {loss_name!r} is not one of {', '.join(CONTRASTIVE)}")
        self.loss_name, self.loss_kwargs = loss_name, dict(loss_kwargs)
        self.loss_fn = CONTRASTIVE[loss_name]
        self.cross_device_negatives = cross_device_negatives

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        checks = [
            (
                cfg.train.loss in CONTRASTIVE,
                f"train.loss must be one of {', '.join(CONTRASTIVE)}, got {cfg.train.loss!r}",
            ),
            (cfg.train.loss != "triplet" or cfg.negatives.num >= 1, "train.loss=triplet needs negatives.num >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_hard_in_batch(cfg, per_device)

    @staticmethod
    def loss_kwargs_of(cfg) -> dict:
        """The loss's keyword arguments from `train.*` (shared with objectives built on the same losses)."""
        kwargs = (
            {"temperature": cfg.train.temperature} if cfg.train.loss == "info_nce" else {"margin": cfg.train.margin}
        )
        if cfg.train.hard_in_batch_k:
            kwargs.update(
                hard_in_batch_k=cfg.train.hard_in_batch_k,
                hard_in_batch_weight=cfg.train.hard_in_batch_weight,
                hard_in_batch_margin=cfg.train.margin,
            )
        return kwargs

    @classmethod
    def from_config(cls, cfg) -> Contrastive:
        return cls(cfg.train.loss, cls.loss_kwargs_of(cfg), cross_device_negatives=cfg.train.cross_device_negatives)

    def masks_false_negatives(self) -> bool:
        return self.loss_name == "info_nce" or bool(self.loss_kwargs.get("hard_in_batch_k"))

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        group_size = group_size_of(batch)
        q_rng, p_rng = jax.random.split(rng)
        q = encode(params, batch["query_ids"], batch["query_mask"], "query", q_rng)
        p = encode(params, batch["passage_ids"], batch["passage_mask"], "passage", p_rng)
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        loss, aux = self.loss_fn(
            q,
            p,
            group_size=group_size,
            axis_name=axis_name if self.cross_device_negatives else None,
            **masks,
            **self.loss_kwargs,
        )
        return loss, aux, {}


def group_size_of(batch: dict) -> int:
    """G = passages per query, from the shapes; a passage count that is not a multiple of the queries is an error."""
    b, n_passages = batch["query_ids"].shape[0], batch["passage_ids"].shape[0]
    if n_passages % b:
        raise ValueError(f"passage_ids has {n_passages} rows, not a multiple of the {b} queries")
    return n_passages // b


def check_hard_in_batch(cfg, per_device: int) -> None:
    """EBR keys: k >= 0, weight >= 0, and k no more than the in-batch passages of other queries' groups."""
    k, group = cfg.train.hard_in_batch_k, 1 + cfg.negatives.num
    queries = cfg.train.global_batch_size if cfg.train.cross_device_negatives else per_device
    if k < 0 or cfg.train.hard_in_batch_weight < 0:
        raise ValueError("train.hard_in_batch_k and train.hard_in_batch_weight must be >= 0")
    if k > (queries - 1) * group:
        raise ValueError(
            f"train.hard_in_batch_k={k} exceeds the {(queries - 1) * group} in-batch passages of other queries"
        )
