"""Defaults for Distill-VQ training (`jdr.vq.train.train_distill_vq`); every field carries a comment."""

from __future__ import annotations

import ml_collections

__all__ = ["vq_config"]


def vq_config() -> ml_collections.ConfigDict:
    """A locked ConfigDict: the quantiser shape (`vq`), the teacher embeddings (`data`), the distillation run
    (`train`) and its checkpoints (`checkpoint`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds faiss's k-means (init) and the query order.

    c.vq = ml_collections.ConfigDict()
    c.vq.M = 48  # PQ sub-spaces = bytes per document at K=256 (48 B for d=384 -> 8 dims per sub-space).
    c.vq.K = 256  # Codewords per sub-space (power of two <= 256; log2 K bits per code).
    c.vq.nlist = 0  # IVF lists (0 = pure PQ / OPQ+PQ).
    c.vq.opq = True  # Start with faiss's OPQ rotation (kept frozen during training).
    c.vq.train_sample = 0  # Rows faiss trains k-means/OPQ on (0 = all documents).

    c.vq.init_index = ""  # A trained faiss index file of this shape to start from ("" = train faiss now).
    c.vq.nprobe = 0  # IVF lists probed by dev evaluation and `jdr vq evaluate` (0 = all lists).

    c.data = ml_collections.ConfigDict()  # Read by `jdr vq train / evaluate` (jdr/vq/cli.py) only.
    c.data.dataset = "scifact"  # BEIR dataset name or dir (jdr.data.beir.resolve_dataset).
    c.data.train_split = "train"  # qrels split whose queries are distilled (their labels are not used).
    c.data.dev_queries = 0  # Train queries held out (seeded) for dev metrics; tune on these, never on test.
    c.data.model = "minilm"  # Teacher: HF/sentence-transformers dir, or "minilm" (installed all-MiniLM-L6-v2).
    c.data.query_max_length = 64  # Query token limit when encoding with the teacher.
    c.data.passage_max_length = 256  # Passage token limit (all-MiniLM-L6-v2's own) when encoding the corpus.
    c.data.embeddings = ""  # Dir with `corpus/` and `queries/` embedding stores (jdr encode); "" = encode now.
    c.data.pseudo_queries = "none"  # Extra label-free queries: "none" | "title" (titles, query tower) | "doc".
    c.data.pseudo_embeddings = ""  # Store of the title embeddings (ids = doc ids) for "title"; "" = encode now.
    c.data.batch_size = 64  # Encoding batch size.

    c.train = ml_collections.ConfigDict()
    c.train.steps = 500  # Adam steps.
    c.train.batch_size = 32  # Queries per step (over all devices).
    c.train.topk = 100  # Teacher top-k candidates per query from the exact dense (Flat) index.
    c.train.in_batch = True  # Also score every other query's candidates (in-batch documents).
    c.train.lr = 1e-4  # Adam learning rate for centroids and codebooks.
    c.train.tau = 0.1  # Soft-assignment temperature softmax(-||r_m - c_mk||^2 / (tau * s)), s = mean ||r_m||^2 at init.
    c.train.loss = "listnet"  # Distillation loss: "listnet" | "kl_distill" | "mse_scores" | "margin_mse".
    c.train.loss_temperature = 1.0  # Score temperature of listnet / kl_distill.
    c.train.ivf_weight = 1.0  # Weight of the coarse (q·centroid) distillation term; only with nlist > 0.
    c.train.query_encoder = False  # Also train the query tower (from data.model; docs stay fixed): "Distill-VQ + QE".
    c.train.encoder_lr = 1e-5  # Adam learning rate of the query tower (only with query_encoder).
    c.train.sup_weight = 0.0  # Weight of the supervised contrastive term on qrels positives (needs positives).

    # Checkpoints of `jdr vq train` in <workdir>/checkpoints (as `jdr train`'s): a rerun of the same command on the
    # same workdir resumes from the latest one exactly; a SIGTERM saves the step reached and exits 75.
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100  # Save every N steps (and at the end, and on a preemption notice).
    c.checkpoint.keep = 1  # Keep the last N checkpoints (a query tower's, with Adam's state, is 3x its weights).
    c.checkpoint.async_save = True  # orbax async save: training continues while the files are written.
    c.lock()
    return c
