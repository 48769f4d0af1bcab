"""Paths and crash-safe writers. Every file jdr writes goes through `atomic_write` / `atomic_path` / `atomic_dir`.

A workdir or output path may be local or a Cloud Storage URI (`gs://bucket/...`, what a TPU pod's workers share):
`as_path` turns what a user typed into an `etils.epath.Path` (the path library orbax uses for checkpoints), and the
writers below work on both. Local: write a temp name in the same directory, fsync, rename (atomic on POSIX).
Cloud Storage has no rename, but an object appears only once its upload completes: the writers stage the file in
a local temp dir and upload it on success, so a reader never sees a half-written file. A directory is uploaded
file by file, so `atomic_dir` on a bucket is atomic per file only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from etils import epath

# Schemes orbax checkpoints can be written to (its tensorstore driver speaks gs:// only); local paths have none.
CLOUD_SCHEMES = ("gs",)


def as_path(path: str | os.PathLike) -> epath.Path:
    """A local path (user `~` expanded) or a `gs://` URI as an `epath.Path`. Any other scheme, or gs:// without
    a library that speaks it, is a ValueError of one line (before anything is written)."""
    text = os.fspath(path)
    if "://" not in text:
        return epath.Path(text).expanduser()
    scheme = text.split("://", 1)[0]
    if scheme not in CLOUD_SCHEMES:
        raise ValueError(
            f"{text}: only local paths and {', '.join(s + '://' for s in CLOUD_SCHEMES)} URIs are "
            "supported (orbax writes checkpoints to no other storage)"
        )
    if not _cloud_backend_available():
        raise ValueError(f"{text}: gs:// paths need gcsfs (pip install gcsfs) or tensorflow; neither is installed")
    return epath.Path(text)


def _cloud_backend_available() -> bool:
    if importlib.util.find_spec("tensorflow") is not None:
        return True
    import fsspec

    try:
        fsspec.get_filesystem_class("gcs")  # gcsfs, or a registered stand-in (tests)
    except (ImportError, ValueError):
        return False
    return True


def is_local(path: str | os.PathLike) -> bool:
    """Whether `path` is on the local filesystem (not a cloud URI)."""
    return "://" not in os.fspath(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_temp(path: Path) -> str:
    """A temp file beside `path` with the permissions a plain `open` would give (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def upload(local: str | os.PathLike, dest: epath.Path) -> None:
    """Copy a local file or directory tree to `dest` (any epath), streaming; an existing `dest` dir is replaced."""
    local = Path(local)
    if local.is_dir():
        if dest.exists():
            dest.rmtree()
        for root, _, files in os.walk(local):
            target = dest / os.path.relpath(root, local) if root != str(local) else dest
            target.mkdir(parents=True, exist_ok=True)
            for name in files:
                upload(Path(root) / name, target / name)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as src, dest.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def _staged(path: epath.Path, make) -> Iterator[Path]:
    """For a cloud `path`: a local staging file/dir (`make(tmpdir)`), uploaded to `path` on success."""
    with tempfile.TemporaryDirectory(prefix="jdr-upload-") as d:
        staged = make(Path(d))
        yield staged
        upload(staged, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temp file for `path`; on success it replaces `path`, on error it is deleted (see the module doc)."""
    if not is_local(path):
        with _staged(as_path(path), lambda d: d / "file") as tmp, open(tmp, mode, **open_kwargs) as f:
            yield f
        return
    path = Path(os.fspath(as_path(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a local temp file path for libraries that write by filename (faiss, numpy, safetensors); on success
    it replaces `path` (renamed, or uploaded to a cloud `path`)."""
    if not is_local(path):
        with _staged(as_path(path), lambda d: d / "file") as tmp:
            yield tmp
        return
    path = Path(os.fspath(as_path(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a local temp directory; on success it replaces `path` (an old `path` is removed first)."""
    if not is_local(path):

        def make(d: Path) -> Path:
            (d / "dir").mkdir()
            return d / "dir"

        with _staged(as_path(path), make) as tmp:
            yield tmp
        return
    path = Path(os.fspath(as_path(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
