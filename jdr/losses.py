"""Retrieval losses: pure functions returning `(loss, aux)`, computed in float32 whatever the encoder's dtype.

Contrastive losses take query embeddings `q[B,H]` and passage embeddings `p[B*G,H]` laid out in groups of
`G = 1 + n_negatives` rows (the positive of local query `i` is row `i*G`, its hard negatives follow it).
Distillation losses take student and teacher scores over candidate lists `[B,C]` with an optional boolean
`mask[B,C]` (True = real candidate, False = padding). Retrieval losses (LTRe / ADORE: learning against a fixed
index) take the current scores over each query's retrieved list `[B,C]` with `relevant` and `valid` masks.

The axis name of a data-parallel map is passed in (`axis_name=`), never read from a global, so the same loss runs
unmapped, under `jax.pmap(axis_name=...)` and under `shard_map` over a Mesh axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax


def _f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _check_group(q, p, group_size: int) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if q.ndim != 2 or p.ndim != 2 or p.shape[0] != q.shape[0] * group_size or p.shape[1] != q.shape[1]:
        raise ValueError(f"expected q[B,H] and p[B*G,H] with G={group_size}; got q{tuple(q.shape)} p{tuple(p.shape)}")


def _gathered_scores(q, p, group_size: int, axis_name: str | None):
    """Raw dot products of the local queries with every passage of the (gathered) batch: `(scores[B, C], labels[B])`,
    C = D*B*G with `axis_name` (passages all-gathered, label of local query i = axis_index*B*G + i*G), else B*G."""
    b = q.shape[0]
    if axis_name is not None:
        p = lax.all_gather(p, axis_name, tiled=True)
        offset = lax.axis_index(axis_name) * b * group_size
    else:
        offset = 0
    return q @ p.T, offset + jnp.arange(b) * group_size


def _dropped_columns(false_negatives, scores, is_pos):
    if false_negatives is None:
        return jnp.zeros(scores.shape, bool)
    if tuple(false_negatives.shape) != tuple(scores.shape):
        raise ValueError(f"false_negatives mask {tuple(false_negatives.shape)} != scores {tuple(scores.shape)}")
    return jnp.asarray(false_negatives, bool) & ~is_pos


def hardest_in_batch(scores, labels, dropped, *, group_size: int, k: int, margin: float):
    """Facebook EBR's online hard negative mining (Huang et al. 2020, sec. 6.1) over the gathered in-batch passages.

    For each query, the `k` highest-scoring passages among the batch's *other* groups (other queries' positives
    and hard negatives; not its own group, which the base loss already scores, and not `dropped` known positives)
    enter EBR's triplet hinge `relu(margin - s(q, p+) + s(q, hard))`. Selection is by the current scores without
    gradient; the hinge is differentiated through both scores. `scores[B, C]` raw dot products, `labels[B]` the
    positive's column, `dropped[B, C]` bool. A query with fewer than k candidates has empty slots, which count as
    zero: the term is the mean over B*k (query, slot) pairs, so per-device means average to the global mean.
    Returns `(term, aux)` with aux `hard_in_batch_loss` (the term) and `hard_in_batch_active` (fraction of filled
    slots inside the margin).
    """
    cols = jnp.arange(scores.shape[1])[None, :]
    own_group = (cols >= labels[:, None]) & (cols < labels[:, None] + group_size)
    candidates = ~own_group & ~dropped
    if k > scores.shape[1] - group_size:
        raise ValueError(f"train.hard_in_batch_k={k} exceeds the {scores.shape[1] - group_size} in-batch candidates")
    _, idx = lax.top_k(jnp.where(candidates, lax.stop_gradient(scores), -jnp.inf), k)
    hard = jnp.take_along_axis(scores, idx, axis=1)
    filled = jnp.take_along_axis(candidates, idx, axis=1)
    pos = jnp.take_along_axis(scores, labels[:, None], axis=1)
    hinge = jnp.where(filled, jax.nn.relu(margin - pos + hard), 0.0)
    active = jnp.sum(filled & (hinge > 0)) / jnp.maximum(jnp.sum(filled), 1)
    return hinge.mean(), {"hard_in_batch_loss": hinge.mean(), "hard_in_batch_active": active}


def info_nce(
    q,
    p,
    *,
    temperature: float,
    group_size: int,
    axis_name: str | None = None,
    false_negatives=None,
    extra_negatives=None,
    extra_false_negatives=None,
    hard_in_batch_k: int = 0,
    hard_in_batch_weight: float = 1.0,
    hard_in_batch_margin: float = 0.2,
):
    """InfoNCE / MultipleNegativesRanking: each query's softmax cross-entropy over every passage in the batch.

    Each query scores its positive against all other passages: the hard negatives of every group plus all other
    queries' positives (in-batch negatives). Scores are dot products divided by `temperature` (use cosine by
    l2-normalising in the encoder). Shapes: `q[B,H]`, `p[B*G,H]`, positive of local query i at local row `i*G`.

    With `axis_name` (inside pmap / shard_map) the passages of every device are gathered with
    `lax.all_gather(p, axis_name, tiled=True)` into `[D*B*G, H]` so the negatives are the global batch, and the
    label of local query i becomes `axis_index * B*G + i*G`.

    `false_negatives`: optional bool `[B, C]` over the columns the query scores (C = D*B*G gathered passages
    with `axis_name`, else B*G): True drops that passage from the query's softmax — a passage the labels call
    relevant to the query (another of its positives, or a hard negative drawn for another query that is one of
    its positives). A query's own positive is never dropped (a True there is ignored). Built by the batch
    builder from the labels, so it follows the all-gather's column order.
    `extra_negatives`: optional `[K, H]` embeddings appended as negatives of every query (e.g. a MoCo queue);
    they get no gradient (`stop_gradient`) and are not gathered (every device passes the same K rows).
    `extra_false_negatives`: optional bool `[B, K]`: True drops that extra row from the query's softmax (a MoCo
    queue row holding one of the query's relevant documents); not counted in the `false_negatives` metric.

    Gradients. The transpose of `all_gather` is `psum_scatter`: in the backward pass every device's cotangent for
    the gathered matrix `[D*B*G,H]` is summed across devices and each device keeps the slice for its own passages.
    So the gradient a device computes is not d(local loss)/d(params) but its own computations' share of
    d(sum over devices of the local losses)/d(params): the passages it encoded receive the gradient from every
    device's queries. The loss returned is the local mean over the B local queries; summing the per-device
    gradients gives d(sum_d loss_d), and the step's `lax.pmean` divides by D, giving d(mean_d loss_d) — exactly
    the gradient of the mean loss over all D*B queries of the unsharded batch, with no extra scaling
    (tests/test_train_step.py checks this to 1e-5 against one device holding the whole batch).

    `hard_in_batch_k` > 0 adds `hard_in_batch_weight` x EBR's hinge over each query's k hardest in-batch
    negatives (`hardest_in_batch`, margin `hard_in_batch_margin`): the softmax already weighs hard negatives by
    their probability; the hinge keeps pushing the hardest few until they sit a margin below the positive.

    Returns `(loss, aux)`; aux: `accuracy` (argmax == positive), `pos_score`, `neg_score` (mean raw dot products
    of positives and of all other unmasked passages), each a local mean (the step pmeans them), and
    `false_negatives` (masked (query, passage) pairs in the whole global batch: psummed over `axis_name`), plus
    `hardest_in_batch`'s aux when it is on.
    """
    _check_group(q, p, group_size)
    q, p = _f32(q, p)
    b = q.shape[0]
    scores, labels = _gathered_scores(q, p, group_size, axis_name)  # [B, D*B*G]
    is_pos = jnp.arange(scores.shape[1])[None, :] == labels[:, None]
    dropped = _dropped_columns(false_negatives, scores, is_pos)
    n_dropped = jnp.sum(dropped).astype(jnp.float32)  # in-batch pairs only
    hard = (
        hardest_in_batch(scores, labels, dropped, group_size=group_size, k=hard_in_batch_k, margin=hard_in_batch_margin)
        if hard_in_batch_k
        else None
    )
    if extra_negatives is not None:
        extra = lax.stop_gradient(jnp.asarray(extra_negatives, jnp.float32))
        if extra.ndim != 2 or extra.shape[1] != q.shape[1]:
            raise ValueError(f"extra_negatives must be [K, {q.shape[1]}], got {tuple(extra.shape)}")
        scores = jnp.concatenate([scores, q @ extra.T], axis=1)
        pad = jnp.zeros((b, extra.shape[0]), bool)
        extra_dropped = pad
        if extra_false_negatives is not None:
            if tuple(extra_false_negatives.shape) != (b, extra.shape[0]):
                raise ValueError(f"extra_false_negatives {tuple(extra_false_negatives.shape)} != {(b, extra.shape[0])}")
            extra_dropped = jnp.asarray(extra_false_negatives, bool)
        is_pos, dropped = jnp.concatenate([is_pos, pad], 1), jnp.concatenate([dropped, extra_dropped], 1)
    logits = jnp.where(dropped, -jnp.inf, scores / temperature)
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    pos = jnp.sum(jnp.where(is_pos, scores, 0.0), axis=1)
    negs = ~is_pos & ~dropped
    neg = jnp.sum(jnp.where(negs, scores, 0.0), axis=1) / jnp.maximum(jnp.sum(negs, axis=1), 1)
    aux = {
        "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "pos_score": pos.mean(),
        "neg_score": neg.mean(),
        "false_negatives": n_dropped if axis_name is None else lax.psum(n_dropped, axis_name),
    }
    if hard is not None:
        loss = loss + hard_in_batch_weight * hard[0]
        aux.update(hard[1])
    return loss, aux


def triplet_margin(
    q,
    p,
    *,
    group_size: int,
    margin: float,
    axis_name: str | None = None,
    false_negatives=None,
    hard_in_batch_k: int = 0,
    hard_in_batch_weight: float = 1.0,
    hard_in_batch_margin: float = 0.2,
):
    """Triplet hinge loss `mean(relu(margin - s(q,p+) + s(q,p-)))` over each query's own hard negatives.

    Scores are dot products. `q[B,H]`, `p[B*G,H]` with `G = group_size >= 2` (positive first in each group).
    Only a query's own group enters the loss, so no cross-device communication is needed, unless
    `hard_in_batch_k` > 0: then passages are gathered over `axis_name` and EBR's online hard negatives
    (`hardest_in_batch`, with `false_negatives` over the gathered columns) add `hard_in_batch_weight` x their
    hinge — EBR's own loss: triplets over offline hard negatives plus the k hardest in-batch ones. The mean over
    the B*(G-1) triplets is local; the step's pmean of grads then gives the gradient of the global mean.
    Returns `(loss, aux)` with `accuracy` (positive beats every hard negative), `pos_score`, `neg_score`,
    `active` (fraction of triplets inside the margin), plus, when it is on, `hardest_in_batch`'s aux and
    `false_negatives` (in-batch pairs masked from the hard-negative search, psummed as in `info_nce`).
    """
    _check_group(q, p, group_size)
    if group_size < 2:
        raise ValueError("triplet_margin needs hard negatives: group_size must be >= 2")
    q, p = _f32(q, p)
    groups = p.reshape(q.shape[0], group_size, q.shape[1])
    scores = jnp.einsum("bh,bgh->bg", q, groups)
    pos, neg = scores[:, :1], scores[:, 1:]
    hinge = jax.nn.relu(margin - pos + neg)
    aux = {
        "accuracy": jnp.mean(jnp.all(pos > neg, axis=1)),
        "pos_score": pos.mean(),
        "neg_score": neg.mean(),
        "active": jnp.mean(hinge > 0),
    }
    loss = hinge.mean()
    if hard_in_batch_k:
        scores, labels = _gathered_scores(q, p, group_size, axis_name)
        is_pos = jnp.arange(scores.shape[1])[None, :] == labels[:, None]
        dropped = _dropped_columns(false_negatives, scores, is_pos)
        term, hard_aux = hardest_in_batch(
            scores, labels, dropped, group_size=group_size, k=hard_in_batch_k, margin=hard_in_batch_margin
        )
        loss = loss + hard_in_batch_weight * term
        n_dropped = jnp.sum(dropped).astype(jnp.float32)
        aux.update(hard_aux, false_negatives=n_dropped if axis_name is None else lax.psum(n_dropped, axis_name))
    return loss, aux


def _mask(scores, mask):
    return jnp.ones(scores.shape, bool) if mask is None else jnp.asarray(mask, bool)


def _check_lists(student, teacher, mask) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"expected student[B,C] and teacher[B,C]; got {student.shape} and {teacher.shape}")
    if mask is not None and tuple(mask.shape) != tuple(student.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != scores shape {tuple(student.shape)}")


def _masked_mean(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _top1_agreement(student, teacher, mask):
    neg = jnp.finfo(jnp.float32).min
    s = jnp.argmax(jnp.where(mask, student, neg), axis=1)
    t = jnp.argmax(jnp.where(mask, teacher, neg), axis=1)
    return jnp.mean(s == t)


def listnet(student, teacher, *, temperature: float = 1.0, mask=None):
    """ListNet: cross-entropy of the teacher's softmax distribution against the student's log-softmax.

    `student[B,C]`, `teacher[B,C]` scores over C candidates per query, both divided by `temperature`; masked
    candidates get zero probability on both sides. Loss is the mean over queries; its gradient is zero when
    student == teacher (it differs from `kl_distill` by the teacher's entropy, a constant).
    Returns `(loss, {"top1_agreement"})`.
    """
    _check_lists(student, teacher, mask)
    student, teacher = _f32(student, teacher)
    m = _mask(student, mask)
    t_prob = jax.nn.softmax(teacher / temperature, axis=-1, where=m)
    t_prob = jnp.where(m, t_prob, 0.0)
    loss = optax.losses.softmax_cross_entropy(student / temperature, t_prob, where=m).mean()
    return loss, {"top1_agreement": _top1_agreement(student, teacher, m)}


def kl_distill(student, teacher, *, temperature: float = 1.0, mask=None):
    """KL(teacher ‖ student) between softmax distributions over each candidate list.

    Shapes and masking as `listnet`; zero (with zero gradient) when student == teacher. Mean over queries.
    Returns `(loss, {"top1_agreement"})`.
    """
    _check_lists(student, teacher, mask)
    student, teacher = _f32(student, teacher)
    m = _mask(student, mask)
    log_s = jax.nn.log_softmax(student / temperature, axis=-1, where=m)
    log_t = jax.nn.log_softmax(teacher / temperature, axis=-1, where=m)
    kl = optax.losses.kl_divergence_with_log_targets(log_s, log_t, where=m)
    return kl.mean(), {"top1_agreement": _top1_agreement(student, teacher, m)}


def mse_scores(student, teacher, *, mask=None):
    """Mean squared error between student and teacher scores over the valid candidates of `[B,C]` lists.

    Returns `(loss, {"top1_agreement"})`.
    """
    _check_lists(student, teacher, mask)
    student, teacher = _f32(student, teacher)
    m = _mask(student, mask)
    loss = _masked_mean(optax.losses.squared_error(student, teacher), m)
    return loss, {"top1_agreement": _top1_agreement(student, teacher, m)}


def margin_mse(student, teacher, *, mask=None):
    """Margin-MSE (Hofstätter et al.): MSE between student and teacher score margins to the first candidate.

    For `[B,C]` lists whose column 0 is the positive, the margins are `s[:,0] - s[:,j]` for j >= 1 (C = 2 is the
    classic pair loss). Masked candidates (mask[:, j] False) are left out; column 0 must be valid.
    Returns `(loss, {"top1_agreement"})`.
    """
    _check_lists(student, teacher, mask)
    if student.shape[1] < 2:
        raise ValueError(f"margin_mse needs at least 2 candidates per query, got {student.shape[1]}")
    student, teacher = _f32(student, teacher)
    m = _mask(student, mask)
    s_margin = student[:, :1] - student[:, 1:]
    t_margin = teacher[:, :1] - teacher[:, 1:]
    loss = _masked_mean(optax.losses.squared_error(s_margin, t_margin), m[:, 1:])
    return loss, {"top1_agreement": _top1_agreement(student, teacher, m)}


def _check_retrieved(scores, relevant, valid) -> None:
    if scores.ndim != 2 or tuple(relevant.shape) != tuple(scores.shape) or tuple(valid.shape) != tuple(scores.shape):
        raise ValueError(
            f"expected scores, relevant, valid all [B,C]; got {scores.shape}, {relevant.shape}, {valid.shape}"
        )


def lambdarank_pairwise(scores, relevant, valid, *, metric_cut: int = 0):
    """ADORE / JPQ's ranking loss over each query's retrieved list (Zhan et al. 2021): RankNet on every (relevant i,
    irrelevant j) pair, weighted by LambdaRank's change in reciprocal rank `|1/rank_i - 1/rank_j|`.

    `scores[B,C]` the current model's scores, `relevant[B,C]`, `valid[B,C]` bool. Column c has rank c+1: the list
    is in the index's retrieval order (top-k), positives the search missed appended after it. With `metric_cut`
    > 0, 1/rank counts as 0 beyond that rank (ADORE's `metric_cut`, JPQ's `lambda_cut`). Pair loss
    `w_ij * softplus(s_j - s_i)`; per query the mean over its pairs (JPQ's `cur_loss.mean()`), then the mean
    over the B queries (a query without pairs adds 0, so per-device means average to the global mean).
    The pair term follows JPQ's run_train.py, softplus(s_irrelevant - s_relevant). (The DRhard adore/train.py
    version read for this applies softplus(s_i - s_j) to both orientations of a pair, whose sum is minimal at equal
    scores; we do not copy that.)
    Returns `(loss, {"pairs": mean number of pairs per query})`.
    """
    _check_retrieved(scores, relevant, valid)
    (scores,) = _f32(scores)
    rel, valid = jnp.asarray(relevant, bool) & valid, jnp.asarray(valid, bool)
    inv_rank = 1.0 / jnp.arange(1, scores.shape[1] + 1, dtype=jnp.float32)
    if metric_cut > 0:
        inv_rank = jnp.where(jnp.arange(scores.shape[1]) < metric_cut, inv_rank, 0.0)
    pairs = rel[:, :, None] & (valid & ~rel)[:, None, :]  # [B, i relevant, j irrelevant]
    weight = jnp.abs(inv_rank[:, None] - inv_rank[None, :])
    cost = jnp.where(pairs, weight * jax.nn.softplus(scores[:, None, :] - scores[:, :, None]), 0.0)
    n_pairs = jnp.sum(pairs, axis=(1, 2))
    per_query = jnp.sum(cost, axis=(1, 2)) / jnp.maximum(n_pairs, 1)
    return per_query.mean(), {"pairs": jnp.mean(n_pairs.astype(jnp.float32))}


def listwise_softmax(scores, relevant, valid, *, temperature: float):
    """Listwise softmax over each query's retrieved list: `-log` of the probability mass the softmax of
    `scores / temperature` over the valid candidates puts on the relevant ones (one positive: plain cross-entropy).
    Shapes as `lambdarank_pairwise`; mean over the B queries (a query without a relevant candidate adds 0).
    Returns `(loss, {"relevant_mass": mean probability on the relevant candidates})`.
    """
    _check_retrieved(scores, relevant, valid)
    (scores,) = _f32(scores)
    valid = jnp.asarray(valid, bool)
    rel = jnp.asarray(relevant, bool) & valid
    logits = scores / temperature
    log_all = jax.nn.logsumexp(jnp.where(valid, logits, -jnp.inf), axis=1)
    log_rel = jax.nn.logsumexp(jnp.where(rel, logits, -jnp.inf), axis=1)
    has_rel = jnp.any(rel, axis=1)
    loss = jnp.where(has_rel, log_all - jnp.where(has_rel, log_rel, 0.0), 0.0)
    return loss.mean(), {"relevant_mass": jnp.mean(jnp.where(has_rel, jnp.exp(-loss), 0.0))}


CONTRASTIVE = {"info_nce": info_nce, "triplet": triplet_margin}  # keys are config `train.loss` values
DISTILLATION = {"listnet": listnet, "kl_distill": kl_distill, "mse_scores": mse_scores, "margin_mse": margin_mse}
RETRIEVAL = {"lambdarank": lambdarank_pairwise, "listwise": listwise_softmax}  # config `ltre.loss` values
