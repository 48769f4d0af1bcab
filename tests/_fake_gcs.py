"""A fake Cloud Storage bucket for tests, offline: `gs://BUCKET/path` maps to `<root>/BUCKET/path` on local disk.

Everything that goes through `etils.epath` (jdr's writers, orbax's metadata, commit markers and deletions) reaches it
through an fsspec filesystem registered for the `gs` / `gcs` protocols (what gcsfs would serve); orbax's array
data, which tensorstore writes with its own GCS driver, is pointed at the same directory with tensorstore's file
driver. Orbax keeps its gs:// behaviour otherwise (steps written in place, committed by a marker file).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


@contextlib.contextmanager
def fake_gcs(root: Path, monkeypatch):
    """Serve gs:// from `root` for the duration of the context."""
    from etils.epath import backend
    from orbax.checkpoint._src.path import gcs_utils

    root.mkdir(parents=True, exist_ok=True)

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, **kwargs):  # gcsfs options (finalize_on_close=...) mean nothing here
            super().__init__(path=str(root), fs=LocalFileSystem())

    def kvstore(path: str) -> dict:
        bucket, inside = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / bucket / inside)}

    registry = importlib.import_module("fsspec.registry")._registry  # `fsspec.registry` is a read-only view
    saved = {k: registry.get(k) for k in ("gs", "gcs")}
    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    try:
        yield root
    finally:
        for name, cls in saved.items():
            if cls is None:
                registry.pop(name, None)
            else:
                registry[name] = cls
        backend.fsspec_backend._get_filesystem.cache_clear()
