"""Initialise Distill-VQ from faiss, so training starts exactly at faiss's own solution.

We build the faiss index with `jdr.index.faiss_index.build_index` ("OPQ{M},IVF{nlist},PQ{M}x{nbits}", inner
product; seeded k-means for IVF and PQ, OPQ's alternating optimisation), which trains it and adds the corpus, and
read the pieces out: OPQ matrix `A`, coarse centroids (quantizer.reconstruct_n), PQ centroids, and each document's
list (quantizer.assign, the rule faiss's own `add` uses). The returned faiss index is the baseline it reproduces.
"""

from __future__ import annotations

import faiss
import numpy as np

from jdr.index.faiss_index import build_index
from jdr.vq.layer import VQIndex, VQSpec

__all__ = ["init_from_faiss", "read_faiss", "unpack_codes"]


def _as_f32(x: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"{name}: expected a [N, {d or 'd'}] float array, got shape {x.shape}")
    return x


def init_from_faiss(
    doc_emb: np.ndarray, spec: VQSpec, *, train_sample: int | None = None, seed: int = 0
) -> tuple[VQIndex, faiss.Index]:
    """Train a faiss index of `spec`'s shape on doc_emb [N, d] and return (VQIndex at faiss's solution, the trained
    faiss index with the corpus added). `train_sample` caps the training rows (seeded random subset)."""
    x = _as_f32(doc_emb, "doc_emb", spec.d)
    if spec.nlist and x.shape[0] < spec.nlist:
        raise ValueError(f"init_from_faiss: {x.shape[0]} documents < nlist={spec.nlist}")
    if x.shape[0] < spec.K:
        raise ValueError(f"init_from_faiss: {x.shape[0]} documents < K={spec.K} codewords")
    index = build_index(x, spec.factory(), metric="ip", train_sample=train_sample, seed=seed)
    return read_faiss(index, spec, x), index


def read_faiss(index: faiss.Index, spec: VQSpec, doc_emb: np.ndarray) -> VQIndex:
    """Read rotation, centroids, codebooks from a trained faiss index of `spec`'s shape; assign doc_emb [N, d] to
    lists with its quantizer (faiss's add rule)."""
    rotation = None
    inner = index
    if spec.opq:
        pre = faiss.downcast_index(index)
        if not isinstance(pre, faiss.IndexPreTransform) or pre.chain.size() != 1:
            raise ValueError(f"read_faiss: expected IndexPreTransform(OPQ, ...) for {spec.factory()}")
        vt = faiss.downcast_VectorTransform(pre.chain.at(0))
        rotation = faiss.vector_to_array(vt.A).reshape(vt.d_out, vt.d_in).astype(np.float32)
        inner = faiss.downcast_index(pre.index)
    x_rot = _as_f32(doc_emb, "doc_emb", spec.d)
    if rotation is not None:
        x_rot = np.ascontiguousarray(x_rot @ rotation.T)
    params = {}
    if spec.nlist:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(inner))
        pq = ivf.pq
        params["centroids"] = ivf.quantizer.reconstruct_n(0, spec.nlist)
        lists = ivf.quantizer.assign(x_rot, 1)[:, 0].astype(np.int32)
    else:
        pq = faiss.downcast_index(inner).pq
        lists = np.zeros(x_rot.shape[0], np.int32)
    if (pq.M, pq.ksub, pq.dsub) != (spec.M, spec.K, spec.dsub):
        raise ValueError(f"read_faiss: index PQ is M={pq.M} K={pq.ksub} dsub={pq.dsub}, spec wants {spec}")
    params["codebooks"] = faiss.vector_to_array(pq.centroids).reshape(spec.M, spec.K, spec.dsub)
    return VQIndex(spec=spec, params=params, rotation=rotation, lists=lists)


def unpack_codes(packed: np.ndarray, M: int, nbits: int) -> np.ndarray:
    """faiss packed PQ codes [N, ceil(M*nbits/8)] uint8 -> code indices [N, M] int32 (faiss's BitstringWriter
    order: code m occupies bits m*nbits .. (m+1)*nbits-1, least significant bit first)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), axis=1, bitorder="little")[:, : M * nbits]
    return (bits.reshape(-1, M, nbits).astype(np.int32) << np.arange(nbits, dtype=np.int32)).sum(-1)
