"""Cross-encoder losses and the bi-encoder's distillation from teacher scores: pure `(loss, aux)` functions over a
training batch's groups, computed in float32.

Groups are the batch layout of every objective: query i's group is columns `[i, 0..G-1]` of a `[B, G]` score
matrix, column 0 its positive, columns 1.. its hard negatives (`G = 1 + negatives.num`).

- Cross-encoder (`RERANK`): `localized_contrastive` (Gao et al. 2021, "Rethink training of BERT rerankers":
  softmax cross-entropy of the positive against its own group's negatives) and `pointwise_bce` (monoBERT:
  each (query, passage) pair classified relevant / not).
- Distillation of a bi-encoder from a teacher's scores of the same groups (`DISTILL`): `margin_mse`
  (Hofstätter et al. 2020: MSE between student and teacher margins positive - negative) and `listwise_kl`
  (KL from the teacher's softmax at `teacher_temperature` to the student's), each optionally plus `info_nce_weight`
  x InfoNCE over the in-batch passages (`jdr.losses.info_nce`).
The student's group scores are `q . p / temperature`: the logits InfoNCE would use, which puts a cosine model
(temperature 0.05: +-20) on the scale of a cross-encoder's logits.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jdr import losses
from jdr.losses import info_nce


def _groups(scores):
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"expected group scores [B, G], got shape {tuple(scores.shape)}")
    return scores


def _rank_aux(scores) -> dict:
    aux = {"accuracy": jnp.mean(jnp.argmax(scores, axis=1) == 0), "pos_score": jnp.mean(scores[:, 0])}
    if scores.shape[1] > 1:
        aux["neg_score"] = jnp.mean(scores[:, 1:])
    return aux


def localized_contrastive(scores, *, temperature: float = 1.0):
    """Listwise softmax over each query's group: `-log softmax(scores[i] / temperature)[0]`, mean over queries.
    Needs G >= 2 (one positive and at least one negative). aux: accuracy (the positive scores highest),
    pos_score, neg_score (mean logits)."""
    scores = _groups(scores)
    if scores.shape[1] < 2:
        raise ValueError("localized_contrastive needs hard negatives: group size must be >= 2")
    labels = jnp.zeros(scores.shape[0], jnp.int32)
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(scores / temperature, labels).mean()
    return loss, _rank_aux(scores)


def pointwise_bce(scores):
    """Binary cross-entropy of `sigmoid(scores)` against labels 1 (column 0) and 0 (the rest), mean over the B*G
    pairs. aux as `localized_contrastive`."""
    scores = _groups(scores)
    labels = jnp.zeros(scores.shape, jnp.float32).at[:, 0].set(1.0)
    return optax.losses.sigmoid_binary_cross_entropy(scores, labels).mean(), _rank_aux(scores)


RERANK = {"localized_contrastive": localized_contrastive, "bce": pointwise_bce}  # config `cross_encoder.loss`


def group_scores(q, p, group_size: int):
    """`[B, G]` dot products of each query with its own group's passages (`q[B,H]`, `p[B*G,H]`)."""
    q, p = jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32)
    if p.shape[0] != q.shape[0] * group_size:
        raise ValueError(f"expected p[{q.shape[0] * group_size}, H] for group size {group_size}, got {p.shape}")
    return jnp.einsum("bh,bgh->bg", q, p.reshape(q.shape[0], group_size, q.shape[1]))


def margin_mse(student, teacher):
    """Margin-MSE: mean over (query, negative) of `((s_0 - s_j) - (t_0 - t_j))^2`, `[B, G]` scores, G >= 2
    (`jdr.losses.margin_mse` over whole groups)."""
    return losses.margin_mse(_groups(student), _groups(teacher))[0]


def listwise_kl(student, teacher, *, teacher_temperature: float = 1.0):
    """KL(softmax(teacher / teacher_temperature) || softmax(student)) per query, mean over queries
    (`jdr.losses.kl_distill` at temperature 1 against the teacher's scores divided by its temperature)."""
    return losses.kl_distill(_groups(student), _groups(teacher) / teacher_temperature)[0]


DISTILL = {"margin_mse": margin_mse, "kl": listwise_kl}  # config `distill.loss`


def distill(
    q,
    p,
    teacher,
    *,
    loss: str,
    group_size: int,
    temperature: float,
    teacher_temperature: float = 1.0,
    info_nce_weight: float = 0.0,
    axis_name: str | None = None,
    false_negatives=None,
):
    """The bi-encoder's distillation objective: `DISTILL[loss]` between the student's group logits
    `q . p / temperature` and the teacher's `teacher[B, G]`, plus `info_nce_weight` x `info_nce` (same
    temperature, gathered over `axis_name`, `false_negatives` masked) when the weight is > 0.
    aux: `distill_loss`, `top1_agreement` (student and teacher rank the same passage first), the InfoNCE aux
    (prefixed `info_nce_`) when on."""
    if loss not in DISTILL:
        raise ValueError(f"distill.loss must be one of {', '.join(DISTILL)}, got {loss!r}")
    student = group_scores(q, p, group_size) / temperature
    teacher = _groups(teacher)
    kw = {"teacher_temperature": teacher_temperature} if loss == "kl" else {}
    term = DISTILL[loss](student, teacher, **kw)
    aux = {
        "distill_loss": term,
        "top1_agreement": jnp.mean(jnp.argmax(student, axis=1) == jnp.argmax(teacher, axis=1)),
        "pos_score": jnp.mean(student[:, 0] * temperature),
    }
    total = term
    if info_nce_weight > 0:
        contrastive, c_aux = info_nce(
            q, p, temperature=temperature, group_size=group_size, axis_name=axis_name, false_negatives=false_negatives
        )
        total = total + info_nce_weight * contrastive
        aux.update({"info_nce_loss": contrastive, **{f"info_nce_{k}": v for k, v in c_aux.items()}})
    return total, aux
