"""Checkpoints: an Orbax CheckpointManager around {train state, data-iterator state, extra JSON, arrays}.

`arrays` is an optional dict of array pytrees a trainer keeps beside its state (GRPO's frozen reference
params); it is restored into the shardings of the template the caller passes.

- `save(step, state, data_state, extra, arrays)` is asynchronous (device arrays are copied, then written in the
  background); it saves when `step % save_every == 0`, or always with `force=True` (end of run, preemption).
- `restore_latest(abstract_state)` returns the newest complete checkpoint restored straight into the
  target shardings (each host reads only its shards), or None for a fresh run.
- SIGTERM (TPU maintenance / preemption) only sets a flag; the training loop checks `should_stop()` between
  steps, saves with force=True and exits, so a signal never interrupts a half-written step. On a multi-host
  pod Orbax's preemption sync point (`reached_preemption`) makes all hosts agree on the same step.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from storm_jax.train.state import TrainState


def _state_to_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def _tree_to_state(tree: dict) -> TrainState:
    return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])


def encode_data_state(state: Any) -> Any:
    """Iterator states as JSON: grain returns bytes (DataLoader) or dicts (DatasetIterator)."""
    if isinstance(state, bytes):
        return {"__bytes_b64__": base64.b64encode(state).decode()}
    return state


def decode_data_state(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes_b64__"}:
        return base64.b64decode(state["__bytes_b64__"])
    return state


@dataclasses.dataclass
class Restored:
    """What `restore` returns: the step, the train state, the data-iterator state, extra JSON, arrays."""

    step: int
    state: TrainState
    data_state: Any
    extra: dict
    arrays: dict | None


class Checkpointer:
    """Save / restore-latest / keep-K / SIGTERM for one run directory (`<workdir>/checkpoints`)."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep),
            save_interval_steps=1,  # we decide when to save (save_every / force)
            enable_async_checkpointing=bool(async_save),
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._stop = threading.Event()
        self._old_handler = None

    # -- preemption ------------------------------------------------------------------------------------------
    def install_sigterm_handler(self) -> None:
        """On SIGTERM set the stop flag (the loop saves and exits at the next step boundary)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._stop.set()

        self._old_handler = signal.signal(signal.SIGTERM, handler)

    def request_stop(self) -> None:
        self._stop.set()

    def should_stop(self, step: int) -> bool:
        """True once SIGTERM arrived (or, on a pod, when Orbax's preemption sync point is reached)."""
        if self._stop.is_set():
            return True
        if jax.process_count() > 1:
            try:
                return bool(self.manager.reached_preemption(step))
            except Exception:  # noqa: BLE001 - no preemption service (e.g. CPU multi-process)
                return False
        return False

    # -- save / restore --------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: TrainState,
        *,
        data_state: Any = None,
        extra: dict | None = None,
        arrays: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Save asynchronously if `step` is a save step (or force); returns whether a save started."""
        if not force and step % self.save_every:
            return False
        if self.manager.latest_step() == step:
            return False
        items = dict(
            state=ocp.args.StandardSave(_state_to_tree(state)),
            data=ocp.args.JsonSave({"state": encode_data_state(data_state)}),
            extra=ocp.args.JsonSave(dict(extra or {})),
        )
        if arrays:
            items["arrays"] = ocp.args.StandardSave(dict(arrays))
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

    def _has_item(self, step: int, name: str) -> bool:
        if "://" in self.directory:  # remote storage: trust the caller's template
            return True
        return os.path.isdir(os.path.join(self.directory, str(step), name))

    def restore(
        self, abstract_state: TrainState, *, step: int | None = None, abstract_arrays: dict | None = None
    ) -> Restored | None:
        """The newest (or the given) checkpoint, or None if there is none.

        `abstract_state` / `abstract_arrays` leaves are ShapeDtypeStructs carrying the target shardings. A
        checkpoint written without arrays (older runs) restores with `arrays=None`.
        """
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        items = dict(
            state=ocp.args.StandardRestore(_state_to_tree(abstract_state)),
            data=ocp.args.JsonRestore(),
            extra=ocp.args.JsonRestore(),
        )
        if abstract_arrays and self._has_item(step, "arrays"):
            items["arrays"] = ocp.args.StandardRestore(dict(abstract_arrays))
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return Restored(
            step=int(step),
            state=_tree_to_state(out["state"]),
            data_state=decode_data_state((out["data"] or {}).get("state")),
            extra=dict(out["extra"] or {}),
            arrays=dict(out["arrays"]) if "arrays" in items else None,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None


def make_checkpointer(workdir: str, ckpt_cfg: Any, *, async_save: bool | None = None) -> Checkpointer:
    """The Checkpointer of a run directory (`<workdir>/checkpoints`) from a `checkpoint` config section."""
    return Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=ckpt_cfg.save_every,
        keep=ckpt_cfg.keep,
        async_save=ckpt_cfg.async_save if async_save is None else async_save,
    )


def latest_step_on_disk(workdir: str) -> int | None:
    """The newest finished checkpoint step of a run directory, read from the listing (creates nothing)."""
    d = os.path.join(workdir, "checkpoints")
    if "://" in d or not os.path.isdir(d):
        return None
    steps = [int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n))]
    return max(steps) if steps else None


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry the shardings (restore targets)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# -- params-only checkpoints (storm-jax convert / export) ---------------------------------------------------------


def save_params(path: str, params: Any) -> None:
    """Write a params pytree as a standalone Orbax checkpoint directory (synchronous)."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path) if "://" not in path else path, params, force=True)
    ckptr.wait_until_finished()


def restore_params(path: str, abstract_params: Any) -> Any:
    """Read a params checkpoint written by `save_params` into the shardings of `abstract_params`."""
    ckptr = ocp.StandardCheckpointer()
    return ckptr.restore(os.path.abspath(path) if "://" not in path else path, abstract_params)
