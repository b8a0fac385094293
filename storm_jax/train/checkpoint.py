"""Checkpoints: an Orbax CheckpointManager around {train state, data-iterator state, extra JSON}.

- `save(step, state, data_state, extra)` is asynchronous (device arrays are copied, then written in the
  background); it saves when `step % save_every == 0`, or always with `force=True` (end of run, preemption).
- `restore_latest(abstract_state)` returns the newest complete checkpoint restored straight into the
  target shardings (each host reads only its shards), or None for a fresh run.
- SIGTERM (TPU maintenance / preemption) only sets a flag; the training loop checks `should_stop()` between
  steps, saves with force=True and exits, so a signal never interrupts a half-written step. On a multi-host
  pod Orbax's preemption sync point (`reached_preemption`) makes all hosts agree on the same step.
"""

from __future__ import annotations

import base64
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
        force: bool = False,
    ) -> bool:
        """Save asynchronously if `step` is a save step (or force); returns whether a save started."""
        if not force and step % self.save_every:
            return False
        if self.manager.latest_step() == step:
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_state_to_tree(state)),
            data=ocp.args.JsonSave({"state": encode_data_state(data_state)}),
            extra=ocp.args.JsonSave(dict(extra or {})),
        )
        return bool(self.manager.save(step, args=args, force=True))

    def restore_latest(self, abstract_state: TrainState) -> tuple[int, TrainState, Any, dict] | None:
        """(step, state, data_state, extra) from the newest checkpoint, or None if there is none.

        `abstract_state` leaves are ShapeDtypeStructs carrying the target shardings.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_state_to_tree(abstract_state)),
            data=ocp.args.JsonRestore(),
            extra=ocp.args.JsonRestore(),
        )
        out = self.manager.restore(step, args=args)
        state = _tree_to_state(out["state"])
        data_state = decode_data_state((out["data"] or {}).get("state"))
        return step, state, data_state, dict(out["extra"] or {})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None


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
