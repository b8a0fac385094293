"""Multi-process helpers: start-up order, per-process work splits, host-value gathers, process-0 side effects.

On a TPU pod JAX runs one process per host. Three rules keep a trainer correct there:

1. `jax.distributed.initialize` runs before anything touches the backend (`jax.devices()`, `jax.device_count()`,
   any array): JAX refuses to initialize afterwards, and before it a process sees only its own devices.
   `ensure_initialized()` is called first by every entry point (CLI, pipeline, trainers); it is idempotent.
2. Work that is not an array computation (rollouts through the execution pool, rewards) is split by process
   with `split_range`, and host values are combined with `allgather`, so every process ends the step with the
   same global view (group statistics, metrics).
3. Files that describe the run (metrics, reports, config dumps, exports) are written by process 0 only
   (`is_main`, `on_main`); Orbax checkpoints are written by every process (each writes its own shards).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

#: Environment variables of an explicit (non-TPU-auto-detected) multi-process launch.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_initialized = False


def wants_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Whether this environment describes a multi-process job (a multi-host TPU slice, or explicit JAX_* vars)."""
    env = os.environ if env is None else env
    multi_host_tpu = env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    explicit = ENV_COORDINATOR in env and int(env.get(ENV_NUM_PROCESSES, "1") or 1) > 1
    return multi_host_tpu or explicit


def ensure_initialized(env: Mapping[str, str] | None = None) -> bool:
    """Initialize jax.distributed once if the environment asks for several processes; True if it is initialized.

    Must run before the backend starts. On CPU (localhost tests, JAX_PLATFORMS=cpu) cross-process collectives
    need an implementation: gloo is selected before initialization, since XLA's CPU client reads it when the
    backend is created.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ if env is None else env
    if not wants_distributed(env):
        return False
    import jax

    if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if ENV_COORDINATOR in env:
        jax.distributed.initialize(
            coordinator_address=env[ENV_COORDINATOR],
            num_processes=int(env[ENV_NUM_PROCESSES]),
            process_id=int(env[ENV_PROCESS_ID]),
        )
    else:  # a TPU VM: the runtime's metadata names the coordinator and this worker's id
        jax.distributed.initialize()
    _initialized = True
    return True


def global_device_count() -> int:
    """The device count of the whole job (all processes): what a mesh is validated against. Initializes first."""
    ensure_initialized()
    import jax

    return jax.device_count()


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main() -> bool:
    """True on process 0, the one process that writes the run's files."""
    return process_index() == 0


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`fn(*args, **kwargs)` on process 0 only (metrics files, reports, exports); None elsewhere."""
    return fn(*args, **kwargs) if is_main() else None


def split_range(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """The contiguous slice [start, stop) of n items that process `index` of `count` handles.

    Contiguous (not strided) so that concatenating every process's results in process order gives the
    single-process order: a gather then needs no permutation. n must divide evenly, so every process does the
    same amount of work per step (an uneven split would idle hosts in lock-step collectives).
    """
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} not in [0, {count})")
    if n % count:
        raise ValueError(f"{n} items do not split evenly over {count} processes")
    per = n // count
    return index * per, (index + 1) * per


def allgather(x: Any) -> Any:
    """Concatenate every process's host array (same shape on all) along axis 0, in process order.

    A pytree of numpy arrays is gathered leaf by leaf. A no-op copy on one process.
    """
    import jax

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, x)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(np.asarray(a), tiled=True)), x)


def allgather_ragged(rows: list[np.ndarray], dtype: Any) -> list[np.ndarray]:
    """Gather a list of 1-D arrays of varying length from every process (same list length on all).

    Padded to the longest row across processes, gathered with the lengths, then cut back: host lists of
    token ids (rollout trajectories) cross processes without pickling.
    """
    import jax

    lengths = np.array([len(r) for r in rows], np.int32)
    width = int(allgather(np.array([lengths.max(initial=0)], np.int32)).max(initial=0))
    if jax.process_count() == 1:
        return [np.asarray(r, dtype) for r in rows]
    padded = np.zeros((len(rows), max(width, 1)), dtype)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    all_rows, all_len = allgather(padded), allgather(lengths)
    return [all_rows[i, : all_len[i]] for i in range(len(all_len))]


def global_array(value: np.ndarray, sharding: Any) -> Any:
    """A global jax.Array from a host array that every process holds in full (same value everywhere).

    Each process places only the slices its own devices hold, so this works for shardings that span
    processes, where `jax.device_put(value, sharding)` would need the value to be identical and addressable.
    """
    import jax

    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def host_value(x: Any) -> np.ndarray:
    """A global jax.Array as a host numpy array on every process (gathering shards held by other hosts)."""
    import jax

    if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
    """A barrier across processes (a no-op on one): e.g. process 0 wrote a file the others read next."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
