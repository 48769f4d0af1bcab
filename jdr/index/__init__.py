"""faiss indexes, the SPANN-style memory-disk index, mixtures of memories, on-disk embedding stores and BM25
(`jdr.index.bm25`, imported on use: bm25s is slow to import). No jax."""

from jdr.index.faiss_index import build_index, load_index, save_index, search
from jdr.index.memories import Memories, Memory, MemoryHits
from jdr.index.spann import SpannHits, SpannIndex, build_spann
from jdr.index.store import load_embeddings, save_embeddings

__all__ = [
    "Memories",
    "Memory",
    "MemoryHits",
    "SpannHits",
    "SpannIndex",
    "build_index",
    "build_spann",
    "load_embeddings",
    "load_index",
    "save_embeddings",
    "save_index",
    "search",
]
