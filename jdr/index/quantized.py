"""Quantized embedding indexes: int8 and binary, with rescoring — sentence-transformers' `quantize_embeddings`
semantics in faiss indexes.

- **int8** (`Int8Calibration`): per-dimension ranges [min, max] over a calibration sample of the corpus, 256 levels
  per dimension, code `c` in [-128, 127] standing for `start + (c + 128) * step`, `step = (max - min) / 255` — ST's
  ranges and code layout, rounded to the nearest level (ST truncates toward zero; rounding halves the worst error
  to step / 2). The index is a faiss `IndexScalarQuantizer` (QT_8bit) whose trained ranges are this calibration
  (faiss decodes code u = c + 128 at `vmin + (u + 0.5) / 255 * vdiff`, so `vmin = start - step / 2`); the
  calibration is stored inside the index file. Search is asymmetric: the float query against decoded vectors.
- **binary** (`binarize`): one sign bit per dimension (`x > 0`, packed as ST's "ubinary"), a faiss
  `IndexBinaryFlat` searched by Hamming distance with the binarized query; score = `d - 2 * hamming` (the inner
  product of the ±1 sign vectors).
- **rescoring** (`QuantizedIndex.search(..., rescore=M)`): the top `k * M` candidates of the quantized search are
  re-scored with the float query against the document vectors kept for it (int8 or float32; for a binary index
  without kept vectors, the ±1 sign vectors, as ST's `semantic_search_faiss` does) and the best k returned.

A `QuantizedIndex` is a directory: `quantized.json` (kind, dims, count, kept vectors), `index.faiss` (the searched
index) and, when vectors are kept for rescoring, `rescore.faiss` (SQ8 or Flat; read with the index).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from jdr.io import atomic_dir

KINDS = ("int8", "binary")
KEEP = ("int8", "float", "none")
META_FILE = "quantized.json"
LEVELS = 255  # steps between a dimension's min and max: 256 codes


@dataclass(frozen=True)
class Int8Calibration:
    """Per-dimension int8 ranges: value `start + (c + 128) * step` for code c in [-128, 127]."""

    start: np.ndarray  # [d] float32: the calibration minimum
    step: np.ndarray  # [d] float32: (max - min) / 255 (> 0)

    @classmethod
    def fit(cls, emb, *, sample: int | None = None, seed: int = 0) -> Int8Calibration:
        """Ranges from `emb[N, d]`, or from `sample` rows of it drawn with `seed` (values outside the sample's
        range are clipped when encoded)."""
        emb = np.asarray(emb, np.float32)
        if emb.ndim != 2 or not len(emb):
            raise ValueError(f"int8 calibration needs a non-empty [n, d] array, got shape {emb.shape}")
        if sample is not None and sample < len(emb):
            emb = emb[np.sort(np.random.default_rng(seed).choice(len(emb), size=sample, replace=False))]
        lo, hi = emb.min(0), emb.max(0)
        step = (hi - lo) / LEVELS
        # a constant dimension still needs a positive step; every value then encodes to code -128 exactly
        step = np.where(step > 0, step, np.float32(1e-12)).astype(np.float32)
        return cls(lo.astype(np.float32), step)

    def encode(self, x) -> np.ndarray:
        """`x[n, d]` -> int8 codes (nearest level, clipped to the calibrated range)."""
        x = np.asarray(x, np.float32)
        return (np.clip(np.rint((x - self.start) / self.step), 0, LEVELS) - 128).astype(np.int8)

    def decode(self, codes) -> np.ndarray:
        """int8 `codes[n, d]` -> float32 values."""
        return (self.start + (np.asarray(codes, np.float32) + 128) * self.step).astype(np.float32)

    def faiss_index(self, metric: int = faiss.METRIC_INNER_PRODUCT) -> faiss.IndexScalarQuantizer:
        """An empty faiss SQ8 index that encodes and decodes exactly as this calibration (trained, ready to add)."""
        d = len(self.start)
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, metric)
        trained = np.concatenate([self.start - self.step / 2, self.step * LEVELS]).astype(np.float32)
        faiss.copy_array_to_vector(trained, index.sq.trained)
        index.is_trained = True
        return index

    @classmethod
    def from_faiss(cls, index: faiss.IndexScalarQuantizer) -> Int8Calibration:
        """The calibration inside a faiss SQ8 index made by `faiss_index`."""
        trained = faiss.vector_to_array(index.sq.trained).astype(np.float32)
        d = index.d
        step = trained[d:] / LEVELS
        return cls(trained[:d] + step / 2, step)


def binarize(x) -> np.ndarray:
    """`x[n, d]` -> packed sign bits `uint8[n, ceil(d / 8)]` (bit = x > 0; ST's "ubinary" precision)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


def unpack_signs(codes, d: int) -> np.ndarray:
    """Packed sign bits -> float32 ±1 `[n, d]`."""
    return np.unpackbits(np.asarray(codes, np.uint8), axis=-1, count=d).astype(np.float32) * 2 - 1


def _float(emb) -> np.ndarray:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [n, d] array, got shape {emb.shape}")
    return emb


class QuantizedIndex:
    """An int8 or binary index over N vectors, optionally with vectors kept for rescoring (inner product)."""

    metric = "ip"

    def __init__(self, kind: str, index, rescore_index: faiss.Index | None, d: int, meta: dict | None = None):
        if kind not in KINDS:
            raise ValueError(f"quantize: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.index, self.rescore_index, self.d = kind, index, rescore_index, d
        self.meta = dict(meta or {})

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def keep(self) -> str:
        """What the rescoring step scores against: "int8", "float" or "none"."""
        if self.rescore_index is None:
            return "none"
        return "float" if isinstance(self.rescore_index, faiss.IndexFlat) else "int8"

    @classmethod
    def build(
        cls, emb, kind: str, *, keep: str | None = None, sample: int | None = None, seed: int = 0
    ) -> QuantizedIndex:
        """Quantize `emb[N, d]` (row i = faiss row i). `keep`: the vectors kept for rescoring — default "int8" for
        a binary index (ST's recipe: binary search, int8 rescoring), "none" for an int8 one (whose own search
        already scores the float query against int8 vectors). `sample`: int8 calibration rows (default all)."""
        emb = _float(emb)
        if kind not in KINDS:
            raise ValueError(f"quantize: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        keep = keep or ("int8" if kind == "binary" else "none")
        if keep not in KEEP:
            raise ValueError(f"rescore vectors must be one of {', '.join(KEEP)}, got {keep!r}")
        if kind == "int8" and keep == "int8":
            raise ValueError("an int8 index already scores against its int8 vectors: keep 'float' or 'none'")
        n, d = emb.shape
        calibration = None
        if kind == "int8" or keep == "int8":
            calibration = Int8Calibration.fit(emb, sample=sample, seed=seed)
        if kind == "binary":
            if d % 8:
                raise ValueError(f"binary quantization needs a dimension divisible by 8, got {d}")
            index = faiss.IndexBinaryFlat(d)
            index.add(binarize(emb))
        else:
            index = calibration.faiss_index()
            index.add(emb)
        rescore = None
        if keep == "float":
            rescore = faiss.IndexFlatIP(d)
            rescore.add(emb)
        elif keep == "int8":
            rescore = calibration.faiss_index()
            rescore.add(emb)
        meta = {"calibration_rows": None if calibration is None else min(sample or n, n), "seed": seed}
        return cls(kind, index, rescore, d, meta)

    def bytes_per_doc(self) -> dict[str, int]:
        """Code bytes per document: `search` (held in RAM and scanned) and `rescore` (read for k*M candidates)."""
        search = self.d // 8 if self.kind == "binary" else self.d
        rescore = {"none": 0, "int8": self.d, "float": 4 * self.d}[self.keep]
        return {"search": search, "rescore": rescore}

    def search(self, queries, k: int, *, rescore: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` for float `queries[M, d]` -> `(scores[M, k], rows[M, k])`, best first (-1 rows past the
        corpus). `rescore=M` > 0: the quantized top `k*M`, re-scored with the float query (see module doc)."""
        q = _float(queries)
        if q.shape[1] != self.d:
            raise ValueError(f"queries have dimension {q.shape[1]} but the index has dimension {self.d}")
        if k < 1 or rescore < 0:
            raise ValueError(f"need k >= 1 and rescore >= 0, got k={k}, rescore={rescore}")
        if rescore and self.kind == "int8" and self.rescore_index is None:
            raise ValueError("rescoring an int8 index needs float vectors kept: build it with --rescore-vectors float")
        depth = min(self.ntotal, k * max(rescore, 1))
        if self.kind == "binary":
            hamming, rows = self.index.search(binarize(q), depth)
            scores = (self.d - 2 * hamming).astype(np.float32)
        else:
            scores, rows = self.index.search(q, depth)
        if rescore:
            scores = np.einsum("md,mkd->mk", q, self._vectors(rows)).astype(np.float32)
            scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")
            scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        return scores[:, :k], rows[:, :k]

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        """Rescoring vectors `[M, K, d]` of `rows[M, K]` (zeros for -1)."""
        flat = np.where(rows >= 0, rows, 0).reshape(-1).astype(np.int64)
        if self.rescore_index is not None:
            vec = self.rescore_index.reconstruct_batch(flat)
        else:  # binary without kept vectors: the ±1 sign vectors (ST's rescoring of a binary index)
            codes = faiss.vector_to_array(self.index.xb).reshape(self.ntotal, -1)
            vec = unpack_signs(codes[flat], self.d)
        vec = vec.reshape(*rows.shape, self.d)
        return np.where((rows >= 0)[..., None], vec, 0)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the directory (atomically; an old one is replaced)."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            if self.kind == "binary":
                faiss.write_index_binary(self.index, str(tmp / "index.faiss"))
            else:
                faiss.write_index(self.index, str(tmp / "index.faiss"))
            if self.rescore_index is not None:
                faiss.write_index(self.rescore_index, str(tmp / "rescore.faiss"))
            meta = {"kind": self.kind, "dims": self.d, "count": self.ntotal, "keep": self.keep, **self.meta}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out_dir

    @classmethod
    def load(cls, in_dir: str | os.PathLike) -> QuantizedIndex:
        in_dir = Path(in_dir)
        try:
            meta = json.loads((in_dir / META_FILE).read_text(encoding="utf-8"))
            kind, d = meta["kind"], int(meta["dims"])
            read = faiss.read_index_binary if kind == "binary" else faiss.read_index
            index = read(str(in_dir / "index.faiss"))
            rescore = faiss.read_index(str(in_dir / "rescore.faiss")) if meta.get("keep", "none") != "none" else None
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"{in_dir}: not a readable quantized index ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if index.ntotal != meta.get("count", index.ntotal) or index.d != d:
            raise ValueError(
                f"{in_dir}: {META_FILE} says {meta.get('count')} x {d} but index.faiss holds {index.ntotal} x {index.d}"
            )
        return cls(
            kind, index, rescore, d, {k: v for k, v in meta.items() if k not in ("kind", "dims", "count", "keep")}
        )


def is_quantized(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `QuantizedIndex.save`."""
    return (Path(path) / META_FILE).is_file()
