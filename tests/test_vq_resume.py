"""Distill-VQ on jdr's training loop: the same per-step metrics as the old hand-written loop, exact resume from a
checkpoint (after a crash or a SIGTERM), one-line errors for a damaged checkpoint or a changed query order."""

import os
import signal

import jax
import numpy as np
import pytest

from jdr.checkpoint import Checkpointer, CheckpointError
from jdr.train.state import TrainState
from jdr.vq.config import vq_config
from jdr.vq.layer import VQIndex, VQSpec
from jdr.vq.query_tower import vq_optimizer
from jdr.vq.resume import QueryOrder, checkpoint_tree
from jdr.vq.train import make_vq_train_step, residual_scale, teacher_candidates, train_distill_vq

D, STEPS = 16, 9

# loss and grad_norm per step of this file's `problem()` as the old loop (a Python `for` over the steps, before the
# port to run_loop) computed them; the port reproduced them bit for bit on x86-64 CPU.
OLD_LOOP = [
    (14.60914421081543, 2.201887369155884),
    (16.42251968383789, 3.311359167098999),
    (13.426313400268555, 1.2800618410110474),
    (13.33731460571289, 1.4872019290924072),
    (13.530055046081543, 1.6478039026260376),
    (13.967626571655273, 2.006532907485962),
    (13.277826309204102, 1.9801335334777832),
    (12.924274444580078, 1.5286999940872192),
    (13.434176445007324, 1.8300426006317139),
]


def problem():
    """60 queries in batches of 16 (3 per epoch, 12 left out of each), IVF + OPQ + the supervised term; a seeded
    init without faiss, so the numbers depend on nothing but jdr."""
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((256, D)).astype(np.float32)
    queries = (rng.standard_normal((60, 3)) @ rng.standard_normal((3, D))).astype(np.float32)
    params = {
        "codebooks": rng.standard_normal((4, 16, 4)).astype(np.float32),
        "centroids": rng.standard_normal((8, D)).astype(np.float32),
    }
    rotation = np.linalg.qr(rng.standard_normal((D, D)))[0].astype(np.float32)
    vq0 = VQIndex(VQSpec(D, 4, 16, 8, True), params, rotation, rng.integers(0, 8, 256).astype(np.int32))
    cfg = vq_config()
    cfg.vq.M, cfg.vq.K, cfg.vq.nlist, cfg.vq.opq = 4, 16, 8, True
    cfg.seed = 3
    cfg.train.update(dict(steps=STEPS, batch_size=16, topk=10, lr=1e-2, tau=0.1, loss_temperature=4.0, sup_weight=0.5))
    cfg.checkpoint.update(dict(every=3, async_save=False))
    positives = [[int(r)] for r in teacher_candidates(docs, queries, 1)[:, 0]]
    return docs, queries, vq0, cfg, positives


def old_loop(docs, queries, vq, cfg, positives) -> list[dict]:
    """The training loop Distill-VQ ran before run_loop, verbatim but for the setup it shared (the oracle)."""
    t = cfg.train
    cand = teacher_candidates(docs, queries, t.topk)
    tx = vq_optimizer(t.lr)
    step = jax.jit(make_vq_train_step(cfg, tx, tau_scale=residual_scale(vq, docs)), donate_argnums=0)
    state = TrainState.create(jax.tree.map(jax.numpy.array, vq.params), tx)
    frozen = {"rotation": jax.numpy.asarray(vq.rotation)}
    rng = np.random.default_rng(cfg.seed)
    order, pos_in_epoch, history = rng.permutation(len(queries)), 0, []
    for _ in range(t.steps):
        if pos_in_epoch + t.batch_size > len(order):
            order, pos_in_epoch = rng.permutation(len(queries)), 0
        qs = order[pos_in_epoch : pos_in_epoch + t.batch_size]
        pos_in_epoch += t.batch_size
        rows = cand[qs]
        batch = {"query_emb": queries[qs], "doc_emb": docs[rows], "lists": vq.lists[rows]}
        batch["pos_mask"] = np.array([np.isin(r, positives[q]) for q, r in zip(qs, rows)])
        state, metrics = step(state, batch, frozen)
        history.append({k: float(v) for k, v in metrics.items()})
    return history


def distill(docs, queries, vq0, cfg, positives, **kwargs):
    return train_distill_vq(docs, queries, cfg, init=vq0, positives=positives, **kwargs)


def assert_same_params(a: VQIndex, b: VQIndex):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.rotation, b.rotation)
    np.testing.assert_array_equal(a.lists, b.lists)


@pytest.fixture(scope="module")
def straight():
    return distill(*problem())


def test_logged_metrics_equal_the_old_loops_step_for_step(straight):
    docs, queries, vq0, cfg, positives = problem()
    assert straight.history == old_loop(docs, queries, vq0, cfg, positives)  # every metric, bit for bit
    assert straight.stopped is None and len(straight.history) == STEPS
    got = [(h["loss"], h["grad_norm"]) for h in straight.history]
    np.testing.assert_allclose(got, OLD_LOOP, rtol=1e-5)  # the recorded values (other CPUs may round differently)


def test_query_order_is_a_pure_function_of_the_step():
    order = QueryOrder(60, 16, seed=3)
    forward = [order.rows(s).tolist() for s in range(1, 10)]
    fresh = QueryOrder(60, 16, seed=3)
    assert [fresh.rows(s).tolist() for s in (7, 2, 9, 1)] == [forward[6], forward[1], forward[8], forward[0]]
    assert sorted(sum(forward[3:6], [])) == sorted(set(sum(forward[3:6], [])))  # an epoch repeats no query


def test_crash_then_rerun_resumes_to_the_same_params_and_history(straight, tmp_path):
    """Stopped after step 5 (as a crash: the last checkpoint is step 3, steps 4-5 are lost and redone), the rerun on
    the same workdir crosses the epoch boundaries and ends bit for bit where the uninterrupted run did."""
    stopped = distill(*problem(), workdir=tmp_path, stop_at=5)
    assert stopped.stopped == "stop_at" and len(stopped.history) == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    resumed = distill(*problem(), workdir=tmp_path)
    assert resumed.stopped is None
    assert resumed.history == straight.history
    assert_same_params(resumed.vq, straight.vq)
    again = distill(*problem(), workdir=tmp_path)  # a finished workdir: restores the last step, trains nothing
    assert again.history == straight.history
    assert_same_params(again.vq, straight.vq)


def test_sigterm_saves_the_step_reached_and_the_rerun_resumes_exactly(straight, tmp_path, monkeypatch):
    rows = QueryOrder.rows

    def rows_then_sigterm(self, step):  # the notice arrives while step 4 trains
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return rows(self, step)

    monkeypatch.setattr(QueryOrder, "rows", rows_then_sigterm)
    preempted = distill(*problem(), workdir=tmp_path)
    monkeypatch.undo()
    assert preempted.stopped == "preempted" and len(preempted.history) == 4
    assert "4" in {p.name for p in (tmp_path / "checkpoints").iterdir()}
    resumed = distill(*problem(), workdir=tmp_path)
    assert resumed.history == straight.history
    assert_same_params(resumed.vq, straight.vq)


def test_a_damaged_checkpoint_array_fails_its_crc_in_one_line(tmp_path):
    import orbax.checkpoint as ocp

    docs, queries, vq0, cfg, positives = problem()
    distill(docs, queries, vq0, cfg, positives, workdir=tmp_path, stop_at=3)
    fresh = TrainState.create(vq0.params, vq_optimizer(cfg.train.lr))
    with Checkpointer(tmp_path / "checkpoints", read_only=True) as reader:
        saved, _ = reader.restore(abstract_state=checkpoint_tree(fresh, vq0))
    bad = jax.tree.map(np.array, saved)  # rewritten through orbax itself: valid files, other weights
    bad["train"].params["codebooks"][0, 0, 0] += 1.0
    step_dir = tmp_path / "checkpoints" / "3"
    (step_dir / "state").rename(tmp_path / "state.orig")
    ocp.PyTreeCheckpointer().save(step_dir / "state", bad)
    with pytest.raises(CheckpointError, match=r"array train/params/codebooks does not match the CRC32") as e:
        distill(docs, queries, vq0, cfg, positives, workdir=tmp_path)
    assert "\n" not in str(e.value)


def test_a_changed_query_order_is_refused_in_one_line(tmp_path):
    docs, queries, vq0, cfg, positives = problem()
    distill(docs, queries, vq0, cfg, positives, workdir=tmp_path, stop_at=3)
    cfg.train.batch_size = 8
    with pytest.raises(ValueError, match=r"query order differs from its checkpoint's \(batch_size 16 -> 8\)") as e:
        distill(docs, queries, vq0, cfg, positives, workdir=tmp_path)
    assert "\n" not in str(e.value)
