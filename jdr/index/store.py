"""Embedding store: a directory with `embeddings.npy` [N, d], `ids.txt` (row i's id on line i) and `meta.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jdr.errors import DataError
from jdr.io import atomic_dir


def save_embeddings(
    out_dir: str | os.PathLike, emb, ids, *, model: str | None = None, tower: str | None = None
) -> Path:
    """Write `emb[N, d]` and its `N` ids to `out_dir` as one unit (temp dir then rename; an old dir is replaced).

    `meta.json` records count, dims, dtype and, when given, the model and tower that produced the vectors."""
    emb = np.asarray(emb)
    ids = [str(i) for i in ids]
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [N, d] array, got shape {emb.shape}")
    if emb.shape[0] != len(ids):
        raise ValueError(f"{emb.shape[0]} embedding rows but {len(ids)} ids")
    bad = next((i for i in ids if not i or "\n" in i or "\r" in i), None)
    if bad is not None:
        raise ValueError(f"id {bad!r} cannot be stored one per line in ids.txt")
    meta = {"count": len(ids), "dims": int(emb.shape[1]), "dtype": str(emb.dtype), "model": model, "tower": tower}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "embeddings.npy", emb)
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_ids(path: str | os.PathLike) -> list[str]:
    """Read an ids file (one id per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    return path.read_text(encoding="utf-8").splitlines()


def load_embeddings(in_dir: str | os.PathLike, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    """Read a store written by `save_embeddings` -> `(emb[N, d], ids)`; `mmap` maps the array read-only."""
    in_dir = Path(in_dir)
    npy = in_dir / "embeddings.npy"
    if not npy.is_file():
        raise DataError(npy, "no such file (not an embedding store?)")
    emb = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    ids = load_ids(in_dir / "ids.txt")
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise DataError(in_dir / "ids.txt", f"{len(ids)} ids but embeddings.npy has shape {emb.shape}")
    return emb, ids
