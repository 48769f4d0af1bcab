"""Checkpoints with orbax: train state + everything needed to resume a run bit-for-bit.

`Checkpointer(directory)` keeps one orbax step directory `<directory>/<step>/` per checkpoint (a training
workdir passes `<workdir>/checkpoints`, see `jdr.models.workdir`), holding the items
- `state`: the UNREPLICATED `TrainState` (host numpy arrays; the loop unreplicates before saving and
  replicates after restoring);
- `arrays`: the jax RNG key's raw data (`jax.random.key_data`) and the negatives table arrays
  (`NegativesTable.to_arrays()`), when there is one;
- `meta`: JSON: iterator state, config, RNG key impl, the hooks' resume state (e.g. an ANCE refresh owed), and
  what orbax cannot store (zero-size arrays, empty dicts);
- `metrics` (orbax's own, when `keep_best_metric` is set): the eval metrics the best checkpoint is chosen by.
Orbax writes each step to a temp directory and renames it after writing `commit_success.txt`; a step without
that marker (a crash mid-save) is set aside as `incomplete.<step>.<time>` when a `Checkpointer` opens the
directory, so a resumed run neither restores it nor collides with it when it saves that step again.
Retention: the last `keep` steps plus the best step by `keep_best_metric`.

The directory may be local or `gs://` (`jdr.io.as_path`). A reader (`read_only=True`: `jdr evaluate / export`
during training) changes nothing on disk: it neither sets aside nor cleans up a step the trainer is still writing.
Each checkpoint records a CRC32 of every array it saves (state, RNG key, negatives table), checked on restore,
so a damaged file is an error, never silently different weights; an array without a saved CRC is an error too
(checkpoints written before CRCs existed are read unchecked). Any failure to write or read a step is a
`CheckpointError` of one line naming the step and what to do; the steps before it stay usable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jdr.distributed import is_primary, sync
from jdr.io import as_path, is_local

log = logging.getLogger(__name__)

_COMMIT_MARKER = "commit_success.txt"  # orbax's atomicity marker, written just before the final rename
_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message is one line naming the step and the way on."""


class _ExpectedOrbaxWarnings(logging.Filter):
    """Warnings orbax logs for what jdr does on purpose: a step without a dev score of its own is saved without
    metrics (ranking it by an older score would pick the wrong best; BestN skips it but warns at each such step),
    and readers open the directory read-only (orbax warns at each open)."""

    EXPECTED = ("Requested `tracked_metric`; did not provide metrics", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.EXPECTED)


logging.getLogger("absl").addFilter(_ExpectedOrbaxWarnings())


class Checkpointer:
    """Save / restore training checkpoints in `directory` (created if missing; see the module docstring).

    `keep`: how many most recent steps to keep; `keep_best_metric`: metric name (e.g. "ndcg@10") whose best
    step (`best_mode` "max" or "min") is kept as well; `async_save`: write in a background thread (`wait()`
    blocks until the last save is on disk). Multi-host: every process calls `save`/`restore` (orbax
    synchronises them); only the primary process sets aside incomplete steps.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        keep_best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"checkpoint best_mode must be 'max' or 'min', got {best_mode!r}")
        directory = as_path(directory)
        self.directory = directory if not is_local(directory) else as_path(os.path.abspath(directory))
        self.keep_best_metric, self.read_only = keep_best_metric, read_only
        self._pending_step: int | None = None  # an async save not yet known to be on disk
        if not read_only:
            if is_primary():
                _set_aside_incomplete(self.directory)
            sync("jdr_checkpoint_open")  # no process may list steps while the primary is still moving some aside
        policies: list = [ocm.LatestN(n=keep)]
        best_fn = None
        if keep_best_metric is not None:
            best_fn = lambda metrics: float(metrics[keep_best_metric])  # noqa: E731
            policies.append(
                ocm.BestN(
                    get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else ocm.AnyPreservationPolicy(policies),
            best_fn=best_fn,  # with a best_fn orbax also writes the metrics, so the best survives a restart
            best_mode=best_mode,
            enable_async_checkpointing=async_save and not read_only,
            # A reader must not delete a save in flight (orbax's temp dirs, or a gs:// step without its marker).
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
            save_interval_steps=0 if read_only else 1,
        )
        # Handlers named up front so a fresh manager can read item metadata (restore_params needs the tree).
        handlers = {
            "state": ocp.PyTreeCheckpointHandler(),
            "arrays": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(
        self,
        step: int,
        state: Any,
        *,
        iterator_state: Mapping[str, Any],
        rng: jax.Array,
        config: Mapping[str, Any],
        negatives: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        hook_state: Mapping[str, Any] | None = None,
    ) -> None:
        """Checkpoint `state` (an unreplicated pytree, e.g. `TrainState`) at `step` with the resume extras.

        `iterator_state`: `GroupIterator.state()`; `rng`: the base jax key (typed or raw uint32);
        `config`: the run config as a JSON-able dict (`ConfigDict.to_dict()`); `negatives`: nested dict of
        numpy arrays (`NegativesTable.to_arrays()`) or None; `metrics`: eval metrics of this step (needed for
        best-step retention); `hook_state`: JSON-able facts the training hooks need on resume (e.g.
        `{"refresh_owed": step}`: an async negatives refresh was in flight). Returns once the arrays are copied
        to host; with `async_save` the write continues in the background.
        """
        if self.read_only:
            raise CheckpointError(f"checkpoint {self.directory} was opened read-only")
        if metrics is not None and self.keep_best_metric is not None:
            value = metrics.get(self.keep_best_metric)
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"checkpoint metrics {sorted(metrics)} lack a finite {self.keep_best_metric!r}")
            metrics = {k: float(v) for k, v in metrics.items()}
        host_state = jax.device_get(state)
        typed = isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
        arrays: dict[str, Any] = {"rng": np.asarray(jax.random.key_data(rng))}
        meta = {
            "format": _FORMAT,
            "step": int(step),
            "iterator_state": dict(iterator_state),
            "config": dict(config),
            "rng_impl": str(jax.random.key_impl(rng)) if typed else None,
            "negatives": None,
            "state_crc32": _digests(host_state),
            "hook_state": dict(hook_state or {}),
        }
        if negatives is not None:
            stored, meta["negatives"] = _split_unstorable(dict(negatives))
            if stored:
                arrays["negatives"] = stored
        meta["arrays_crc32"] = _digests(arrays)
        # orbax first waits for the previous async save: a failure of that one surfaces here.
        with self._errors("write", self._pending_step if self._pending_step is not None else step):
            self._manager.wait_until_finished()
        with self._errors("write", step):
            self._pending_step = int(step)
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(host_state),
                    arrays=ocp.args.StandardSave(arrays),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
            )

    def restore(self, step: int | None = None, *, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Load `step` (default: the latest complete one) -> `(state, extras)`.

        `abstract_state`: a pytree with the saved state's structure whose leaves give shape and dtype (real
        arrays or `jax.ShapeDtypeStruct`); the state comes back with numpy leaves, unreplicated. `extras`:
        `iterator_state`, `rng` (a jax key of the saved kind), `config`, `negatives` (nested dict of numpy
        arrays, or None), `metrics` (or None), `step`, `hook_state` (a dict, empty if none was saved). No
        checkpoint is a FileNotFoundError.
        """
        step = self._complete_step(step)
        with self._errors("read", step):
            meta = self._meta(step)
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=_numpy_restore(abstract_state), arrays=ocp.args.StandardRestore())
            )
            _check_digests(restored.state, meta, "state_crc32")
            _check_digests(restored.arrays, meta, "arrays_crc32")
            arrays = restored.arrays
            key_data = jnp.asarray(arrays["rng"])
            rng = jax.random.wrap_key_data(key_data, impl=meta["rng_impl"]) if meta["rng_impl"] else key_data
            negatives = None
            if meta["negatives"] is not None:
                negatives = _join_unstorable(_to_numpy(arrays.get("negatives", {})), meta["negatives"])
            metrics = self.metrics(step)
        extras = {
            "step": int(meta["step"]),
            "iterator_state": meta["iterator_state"],
            "rng": rng,
            "config": meta["config"],
            "negatives": negatives,
            "metrics": metrics,
            "hook_state": meta.get("hook_state") or {},  # absent from checkpoints written before it existed
        }
        return restored.state, extras

    def restore_params(self, step: int | None = None) -> Any:
        """Only `state.params` of `step` (default: latest complete) as a nested dict of numpy arrays.

        For inference and export from a workdir: reads no optimizer state and needs no abstract state.
        """
        step = self._complete_step(step)
        with self._errors("read", step):
            meta = self._meta(step)
            tree = self._manager.item_metadata(step)["state"]
            if tree is None or "params" not in tree:
                raise ValueError(f"checkpoint {self.directory / str(step)} holds no state.params")
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=_numpy_restore({"params": tree["params"]}, partial=True))
            )
            _check_digests(restored.state, meta, "state_crc32")
        return restored.state["params"]

    def metrics(self, step: int) -> dict[str, float] | None:
        """The eval metrics saved with `step` (only a step with a dev score of its own has them), or None."""
        return self._manager.metrics(step)

    def best_step(self, metric: str, mode: str = "max") -> int:
        """The complete step whose saved metrics hold the best `metric` (`mode` "max" or "min").

        Only steps saved with a dev score of their own step have metrics; none is a FileNotFoundError."""
        scored = {s: m[metric] for s in self.all_steps() if (m := self.metrics(s)) and metric in m}
        if not scored:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory} has a {metric!r} score "
                f"(steps {self.all_steps()}); dev evaluation must run at a checkpoint step"
            )
        pick = max if mode == "max" else min
        return pick(scored, key=lambda s: (scored[s], s))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        # The manager's own list (read at open, updated by our saves) minus steps without the commit marker:
        # that drops an async save still in flight. No reload(): it would forget an in-flight step for retention.
        return sorted(s for s in self._manager.all_steps() if (self.directory / str(s) / _COMMIT_MARKER).exists())

    def _complete_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        elif step not in self.all_steps():
            raise FileNotFoundError(
                f"no complete checkpoint of step {step} in {self.directory} (have {self.all_steps()})"
            )
        return step

    def _meta(self, step: int) -> dict:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"checkpoint {self.directory / str(step)}: format {meta.get('format')}, this jdr reads format {_FORMAT}"
            )
        return meta

    def wait(self) -> None:
        """Block until a background save has finished (call before reading the checkpoint or exiting)."""
        with self._errors("write", self._pending_step):
            self._manager.wait_until_finished()
        self._pending_step = None

    def close(self) -> None:
        """Finish pending saves and release orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    @contextlib.contextmanager
    def _errors(self, what: str, step: int | None):
        """Turn any failure of reading / writing `step` into one `CheckpointError` line saying what still works."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            where = self.directory / str(step)
            good = [s for s in self._on_disk_steps() if step is None or s < step]
            if what == "write":
                self._pending_step = None
                tail = f"the last complete checkpoint is step {good[-1]}" if good else "no complete checkpoint"
                msg = f"writing checkpoint {where} failed ({type(e).__name__}: {first}); {tail}"
            else:
                fallback = f"to resume from step {good[-1]}" if good else "to start over"
                msg = f"checkpoint {where} cannot be read ({type(e).__name__}: {first}); move it aside {fallback}"
            raise CheckpointError(msg) from e

    def _on_disk_steps(self) -> list[int]:
        """Committed steps as the directory shows them now (the manager's list may hold a failed step)."""
        try:
            return sorted(
                int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and (p / _COMMIT_MARKER).exists()
            )
        except OSError:
            return []

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _numpy_restore(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore args that give host numpy leaves shaped like `abstract` (arrays, ShapeDtypeStructs, metadata).

    Shape/dtype only, no sharding: the replicated / sharded placement is the loop's business.
    """
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), abstract)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=partial)


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _split_unstorable(tree: dict, prefix: tuple = ()) -> tuple[dict, dict]:
    """Orbax refuses zero-size arrays and drops empty dicts: move them into a JSON-able description.

    Returns `(storable_tree, layout)` where layout is `{"empty": [[path...], shape, dtype] list, "dicts": paths}`.
    """
    layout: dict[str, list] = {"empty": [], "dicts": []}

    def walk(node: dict, path: tuple) -> dict:
        out = {}
        if not node:
            layout["dicts"].append(list(path))
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValueError(f"checkpoint negatives: key {key!r} at {'/'.join(path)} is not a string")
            if isinstance(value, Mapping):
                sub = walk(dict(value), path + (key,))
                if sub:
                    out[key] = sub
            else:
                value = np.asarray(value)
                if value.dtype == object or value.dtype.kind in "USV":
                    raise ValueError(
                        f"checkpoint negatives: {'/'.join(path + (key,))} has dtype {value.dtype}; store numbers only"
                    )
                if value.size:
                    out[key] = value
                else:
                    layout["empty"].append([list(path + (key,)), list(value.shape), value.dtype.str])
        return out

    return walk(tree, prefix), layout


def _join_unstorable(tree: dict, layout: Mapping[str, list]) -> dict:
    """Inverse of `_split_unstorable`."""

    def node_at(path) -> dict:
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        return node

    for path in layout["dicts"]:
        node_at(path)
    for path, shape, dtype in layout["empty"]:
        node_at(path[:-1])[path[-1]] = np.zeros(shape, np.dtype(dtype))
    return tree


def _leaf_key(path) -> str:
    """'params/shared/embeddings/...' for a tree path, the same for a TrainState and a {"params": ...} dict."""
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _digests(tree) -> dict[str, int]:
    """CRC32 of every array leaf's bytes, keyed by its path."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        data = np.ascontiguousarray(np.asarray(leaf)).reshape(-1).view(np.uint8)
        out[_leaf_key(path)] = zlib.crc32(data)
    return out


def _check_digests(tree, meta: Mapping, field: str) -> None:
    """Raise ValueError naming the first array of `tree` whose bytes differ from the CRC saved in `meta[field]`, or
    that has no CRC there. A checkpoint without `field` (written before those CRCs existed) is not checked."""
    saved = meta.get(field)
    if saved is None:
        return
    for key, crc in _digests(tree).items():
        if key not in saved:
            raise ValueError(f"array {key} has no CRC32 saved with it ({field}; the metadata is damaged)")
        if saved[key] != crc:
            raise ValueError(f"array {key} does not match the CRC32 saved with it (the file is damaged)")


def _set_aside_incomplete(directory) -> None:
    """Rename step dirs that lack orbax's commit marker (a crash mid-save) to `incomplete.<step>.<time>`."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and child.name.isdigit() and not (child / _COMMIT_MARKER).exists():
            target = directory / f"incomplete.{child.name}.{int(time.time())}"
            log.warning("checkpoint %s is incomplete (no %s); moved to %s", child, _COMMIT_MARKER, target.name)
            child.rename(target)
