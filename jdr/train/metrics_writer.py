"""A run's metric files: `metrics.jsonl` + TensorBoard scalars (`MetricsWriter`, local or gs://: TensorBoard event
files go through `etils.epath`), and `write_json` for `timing.json` / `final_metrics.json`."""

from __future__ import annotations

import io
import json
from typing import Any

from jdr.io import as_path, atomic_write, is_local


class MetricsWriter:
    """Appends metrics as JSON lines (one per logged step) and, optionally, TensorBoard scalars.

    `resume_step`: the step a resumed run restarts from; records of later steps (logged before the preemption,
    after the last checkpoint) are dropped so every step appears once, and TensorBoard purges them likewise. On a
    cloud workdir (no append on object storage) the file is rewritten whole at each write, atomically.
    """

    def __init__(self, workdir, tensorboard: bool = True, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        workdir = as_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self._lines: list[str] = []
        self._tb = None
        if not enabled:
            return
        self._keep_until(resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            if not is_local(workdir):
                _use_epath_event_files(str(workdir).split("://", 1)[0])
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _keep_until(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash mid-append
                continue
        self._lines = keep
        if keep != lines:
            with atomic_write(self.path) as f:
                f.writelines(x + "\n" for x in keep)

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}})
        self._lines.append(line)
        if is_local(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")
        else:
            with atomic_write(self.path) as f:
                f.writelines(x + "\n" for x in self._lines)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class _EpathEventFile:
    """A TensorBoard event file on object storage: kept in memory, re-uploaded whole (atomically) on flush."""

    def __init__(self, path: str):
        self.path, self.buffer = as_path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        with atomic_write(self.path, "wb") as f:
            f.write(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX writer factory for cloud URIs through `etils.epath` (its own needs google-cloud-storage)."""

    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(path)

    def directory_check(self, path: str) -> None:  # object storage has no directories to create
        pass


def _use_epath_event_files(scheme: str) -> None:
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _EpathEventFiles())


def write_json(path, obj: Any) -> None:
    """Write a JSON file atomically (local path or cloud URI)."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
