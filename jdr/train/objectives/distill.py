"""Distillation objective: a bi-encoder taught by a teacher's scores of its training groups (Hofstätter et al.'s
Margin-MSE; listwise KL as RocketQAv2 / sentence-transformers' DistillKLDivLoss), alone or plus InfoNCE.

Batch (per device): the contrastive layout plus `teacher_scores [B, G]` — the teacher's score of each passage of
each group, which the `jsonl` source reads from a `score` on every passage (`jdr score` writes them with a
cross-encoder; bring your own the same way). Student logits are `q . p / train.temperature` over the group.

Config: `train.objective=distill`; `distill.loss` ("margin_mse" | "kl"), `distill.teacher_temperature` (KL: the
teacher's softmax temperature), `distill.info_nce_weight` (> 0 adds that x InfoNCE over the in-batch passages,
gathered across devices when `train.cross_device_negatives`, false negatives masked); `data.source=jsonl`
with `negatives.source=file` and `negatives.num >= 1` (every sampled passage must carry a score; a query with a
missing score or too few scored negatives is one line naming the file and line, at load). No ANCE refresh: it
would sample passages the teacher never scored.
"""

from __future__ import annotations

import jax

from jdr.losses_rerank import DISTILL, distill
from jdr.train.objectives.base import CONTRASTIVE_BATCH_KEYS, Objective, register
from jdr.train.objectives.contrastive import group_size_of


@register
class Distill(Objective):
    """`loss` a key of `jdr.losses_rerank.DISTILL`; `temperature` the student's; see the module docstring."""

    name = "distill"
    batch_keys = CONTRASTIVE_BATCH_KEYS + ("teacher_scores",)

    def __init__(
        self,
        loss: str,
        *,
        temperature: float,
        teacher_temperature: float = 1.0,
        info_nce_weight: float = 0.0,
        cross_device_negatives: bool = True,
    ):
        if loss not in DISTILL:
            raise ValueError(f"distill.loss must be one of {', '.join(DISTILL)}, got {loss!r}")
        self.loss_name, self.temperature, self.teacher_temperature = loss, temperature, teacher_temperature
        self.info_nce_weight, self.cross_device_negatives = info_nce_weight, cross_device_negatives

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        d = cfg.distill
        checks = [
            (d.loss in DISTILL, f"distill.loss must be one of {', '.join(DISTILL)}, got {d.loss!r}"),
            (d.teacher_temperature > 0, "distill.teacher_temperature must be > 0"),
            (d.info_nce_weight >= 0, "distill.info_nce_weight must be >= 0"),
            (
                cfg.data.source == "jsonl",
                "train.objective=distill reads teacher scores from data.source=jsonl "
                "(a `score` on every passage: `jdr score`)",
            ),
            (
                cfg.negatives.source == "file" and cfg.negatives.num >= 1,
                "train.objective=distill needs negatives.source=file and negatives.num >= 1 (the scored negatives)",
            ),
            (
                not cfg.negatives.refresh_every,
                "train.objective=distill: no ANCE refresh (the teacher never scored what it would mine)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_config(cls, cfg) -> Distill:
        d = cfg.distill
        return cls(
            d.loss,
            temperature=cfg.train.temperature,
            teacher_temperature=d.teacher_temperature,
            info_nce_weight=d.info_nce_weight,
            cross_device_negatives=cfg.train.cross_device_negatives,
        )

    def masks_false_negatives(self) -> bool:
        return self.info_nce_weight > 0

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        q_rng, p_rng = jax.random.split(rng)
        q = encode(params, batch["query_ids"], batch["query_mask"], "query", q_rng)
        p = encode(params, batch["passage_ids"], batch["passage_mask"], "passage", p_rng)
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        loss, aux = distill(
            q,
            p,
            batch["teacher_scores"],
            loss=self.loss_name,
            group_size=group_size_of(batch),
            temperature=self.temperature,
            teacher_temperature=self.teacher_temperature,
            info_nce_weight=self.info_nce_weight,
            axis_name=axis_name if self.cross_device_negatives else None,
            **masks,
        )
        return loss, aux, {}
