"""Distill-VQ: a differentiable IVF + PQ (+ frozen OPQ) quantiser initialised from faiss, trained by distilling a
dense teacher's ranking, and exported back to faiss.IndexIVFPQ / IndexPQ with bit-identical codes."""

from jdr.vq.export import export_faiss, load_vq, save_faiss, save_vq
from jdr.vq.init import init_from_faiss
from jdr.vq.layer import VQIndex, VQSpec, decode, encode, quantize, rotate
from jdr.vq.train import make_vq_train_step, train_distill_vq

__all__ = [
    "VQIndex",
    "VQSpec",
    "decode",
    "encode",
    "quantize",
    "rotate",
    "init_from_faiss",
    "export_faiss",
    "save_faiss",
    "save_vq",
    "load_vq",
    "make_vq_train_step",
    "train_distill_vq",
]
