"""faiss indexes and on-disk embedding stores (no jax here)."""

from jdr.index.faiss_index import build_index, load_index, save_index, search
from jdr.index.store import load_embeddings, save_embeddings

__all__ = ["build_index", "load_embeddings", "load_index", "save_embeddings", "save_index", "search"]
