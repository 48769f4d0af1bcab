"""Multi-host set-up and data sharding: which process reads which rows, gathers, barriers.

One jdr process runs per host (TPU VM worker, GPU node, or SLURM task); each drives its local devices with
`jax.pmap(axis_name="batch")`. Across processes the pmapped collectives (`all_gather`, `pmean`) span every
device of every host, so each process must feed exactly its own contiguous rows of each global batch:
process p's local devices hold global device rows `p * n_local ... (p + 1) * n_local - 1` in order
(`jax.devices()` lists devices process by process, and pmap numbers `axis_index` in that order;
tests/test_distributed.py checks it).

Configuration, first match wins:
1. arguments to `initialize(...)`;
2. `JDR_COORDINATOR` (host:port), `JDR_NUM_PROCESSES`, `JDR_PROCESS_ID` (set by tpu_scripts/gpu_slurm.sbatch);
3. `JDR_DISTRIBUTED=auto` (set by tpu_scripts/tpu_pod_train.sh): jax's own cluster detection (Cloud TPU, SLURM,
   Open MPI); inside `srun` with `SLURM_NTASKS > 1` this is chosen without the variable;
4. otherwise one process: `initialize` does nothing. `JDR_DISTRIBUTED=off` forces this.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JDR_COORDINATOR"
ENV_NUM_PROCESSES = "JDR_NUM_PROCESSES"
ENV_PROCESS_ID = "JDR_PROCESS_ID"
ENV_MODE = "JDR_DISTRIBUTED"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How `initialize` will start jax.distributed. `mode`: "single" (no-op), "explicit" or "auto" (jax detects)."""

    mode: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected an integer") from None


def resolve_config(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """Decide how to start jax.distributed from arguments and environment (`env` defaults to `os.environ`).

    Pure (reads no devices), so launch configurations can be tested without a cluster. Raises ValueError with
    one line naming the variable when the settings are partial or inconsistent.
    """
    env = os.environ if env is None else env
    mode = env.get(ENV_MODE, "").strip().lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"{ENV_MODE}={mode!r}: expected 'auto', 'off' or unset")
    if mode == "off":
        return DistributedConfig("single")
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    given = {ENV_COORDINATOR: coordinator_address, ENV_NUM_PROCESSES: num_processes, ENV_PROCESS_ID: process_id}
    if any(v is not None for v in given.values()):
        if num_processes == 1 and coordinator_address is None:
            return DistributedConfig("single")
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"distributed set-up needs {', '.join(missing)} as well (or as arguments)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"{ENV_PROCESS_ID}={process_id} must lie in [0, {ENV_NUM_PROCESSES}={num_processes})")
        if ":" not in coordinator_address:
            raise ValueError(f"{ENV_COORDINATOR}={coordinator_address!r}: expected host:port")
        if num_processes == 1:
            return DistributedConfig("single")
        return DistributedConfig("explicit", coordinator_address, num_processes, process_id)
    if mode == "auto":
        return DistributedConfig("auto")
    # jax's SLURM detection reads SLURM_STEP_NODELIST, which only `srun` sets; an sbatch shell is one process.
    if (_env_int(env, "SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_NODELIST" in env:
        return DistributedConfig("auto")
    return DistributedConfig("single")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> DistributedConfig:
    """Start jax.distributed for multi-host training; a no-op for one process or when already started. Call it
    before any other jax use (jax fixes the device list on first use).

    See the module docstring for where the settings come from. On CPU the cross-process collectives use gloo
    (`jax_cpu_collectives_implementation`), which is what the 2-process CPU test runs on. Returns the resolved
    `DistributedConfig`.
    """
    import jax

    cfg = resolve_config(coordinator_address, num_processes, process_id)
    # A second call (e.g. a CLI command that trains then evaluates) must not start a second client.
    if cfg.mode == "single" or jax.distributed.is_initialized():
        return cfg
    # Without this, multi-process CPU runs have no cross-process collectives (gloo is jax 0.10's default, but the
    # default has changed between versions).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.mode == "auto":
        jax.distributed.initialize(local_device_ids=local_device_ids)
    else:
        jax.distributed.initialize(
            cfg.coordinator_address,
            cfg.num_processes,
            cfg.process_id,
            local_device_ids=local_device_ids,
            # jax's SLURM detection would pin each task to GPU SLURM_LOCALID; jdr runs one process per host
            # driving all its devices, so detection stays off when the settings are explicit.
            cluster_detection_method="deactivate",
        )
    use_coordination_barriers()
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return cfg


def host_rows(n_global: int, process_index: int, process_count: int) -> slice:
    """Rows of a global batch of `n_global` rows that process `process_index` of `process_count` feeds.

    Contiguous and equal: process p gets `[p * n / P, (p + 1) * n / P)`, so that the concatenation over processes
    in process order is the global batch in order. `n_global` must divide evenly (each device gets the same rows).
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    if n_global % process_count:
        raise ValueError(f"global batch size {n_global} is not divisible by the process count {process_count}")
    per = n_global // process_count
    return slice(process_index * per, (process_index + 1) * per)


def host_shard(global_batch_size: int) -> slice:
    """`host_rows` for this process: the rows of every global batch of `global_batch_size` this host reads."""
    import jax

    return host_rows(global_batch_size, jax.process_index(), jax.process_count())


def shard_rows(n: int, process_index: int, process_count: int) -> slice:
    """Contiguous shard of `n` items (e.g. corpus rows to encode) for one process; sizes differ by at most one.

    Same split as `np.array_split`: the first `n % P` processes get one extra row.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return slice(start, start + base + (process_index < extra))


def is_primary() -> bool:
    """True on process 0, the one process that writes shared outputs (checkpoint metadata, runs, exports)."""
    import jax

    return jax.process_index() == 0


_BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # a slow corpus encode on one host must not break the barrier
_barrier_count = itertools.count()


def _distributed_client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jdr.distributed: several processes but jax.distributed is not initialized")
    return client


def sync(name: str) -> None:
    """Barrier: every process waits here until all have reached `sync(name)` (same name everywhere).

    A barrier of the coordination service (`jax.distributed`'s key-value store), not a device collective: a
    collective issued from the host between train steps can pair with the wrong collective on another process
    when devices still have queued work, which deadlocked `jdr train` on 2 CPU processes under load."""
    import jax

    if jax.process_count() > 1:
        _distributed_client().wait_at_barrier(f"jdr/{name}/{next(_barrier_count)}", _BARRIER_TIMEOUT_MS)


def broadcast_from_primary(name: str, value: str) -> str:
    """Process 0's `value` on every process: how one decision (e.g. "swap the refreshed negatives now") is made
    once and followed everywhere. `name` must be unique per call and the same on every process (include the step).
    Coordination-service key-value store, not a device collective (see `sync`)."""
    import jax

    if jax.process_count() == 1:
        return value
    client, key = _distributed_client(), f"jdr/{name}"
    if is_primary():
        client.key_value_set(key, value)
        return value
    return client.blocking_key_value_get(key, _BARRIER_TIMEOUT_MS)


def raise_if_any_failed(name: str, error: BaseException | None, exc_type: type = RuntimeError) -> None:
    """Agree on the outcome of work every process did on its own: each publishes whether it failed, and if any
    did, every other process raises `exc_type("process P: <its error>")`, so no process goes
    on alone into a collective the others never reach. The failing process raises its own error (as `exc_type`,
    chained); one process alone just does that."""
    import jax

    failed: list[tuple[int, str]] = []
    if jax.process_count() > 1:
        client, index = _distributed_client(), jax.process_index()
        client.key_value_set(f"jdr/{name}/{index}", "" if error is None else _one_line(error))
        others = [p for p in range(jax.process_count()) if p != index]
        failed = [
            (p, m) for p in others if (m := client.blocking_key_value_get(f"jdr/{name}/{p}", _BARRIER_TIMEOUT_MS))
        ]
    if isinstance(error, exc_type):
        raise error
    if error is not None:
        raise exc_type(_one_line(error)) from error
    if failed:
        raise exc_type(f"process {failed[0][0]}: {failed[0][1]}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def use_coordination_barriers() -> None:
    """Make orbax's own barriers coordination-service barriers too (its absl flag; same reason as `sync`)."""
    from absl import flags
    from orbax.checkpoint._src.multihost import multihost  # noqa: F401  (defines the flag)

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["jdr"], known_only=True)
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def allgather_host(array: np.ndarray) -> np.ndarray:
    """Stack one numpy array per process: `[process_count, *array.shape]` (shapes must match on every process)."""
    import jax

    array = np.asarray(array)
    if jax.process_count() == 1:
        return array[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=False))


def encode_sharded(encode_fn: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """Encode `texts` with each process doing its `shard_rows` share; returns all `[len(texts), d]` rows everywhere.

    `encode_fn(texts) -> np.ndarray[n, d]` runs on local devices only (e.g. `jdr.models.inference.encode_texts`).
    Every process holds the whole result afterwards; only `is_primary()` should write it. Shards are padded to
    equal length for the gather, then trimmed. A process whose share fails makes every process raise.
    """
    import jax

    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return np.asarray(encode_fn(texts))
    if len(texts) < count:
        raise ValueError(f"cannot shard {len(texts)} texts over {count} processes")
    error = local = None
    try:
        local = np.asarray(encode_fn(texts[shard_rows(len(texts), index, count)]))
        if local.ndim != 2:
            raise ValueError(f"encode_fn must return [n, d] rows, got shape {local.shape}")
    except Exception as e:  # every process must learn of it before the gather, or the others wait there forever
        error = e
    raise_if_any_failed(f"encode_sharded/{next(_barrier_count)}", error)
    longest = shard_rows(len(texts), 0, count).stop
    padded = np.zeros((longest, local.shape[1]), local.dtype)
    padded[: len(local)] = local
    gathered = allgather_host(padded)
    shards = [shard_rows(len(texts), p, count) for p in range(count)]
    return np.concatenate([gathered[p, : s.stop - s.start] for p, s in enumerate(shards)])
