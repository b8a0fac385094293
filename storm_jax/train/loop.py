"""The training loop every trainer runs: any step over any iterator, with exact resume.

A trainer plugs in three things and the loop does the rest (restore or init, SIGTERM save, fault injection,
metrics.jsonl / TensorBoard, progress bar, periodic and final checkpoints):

  step_fn(state, item, ctx) -> (state, metrics)   one optimizer step (or several: GRPO's rollouts + updates)
                                                  on one item of the iterator; `device_step(train_step)`
                                                  makes one from a jitted step of any loss
  batches                                         any iterator; with get_state()/set_state() it resumes
  extra / arrays                                  named host objects with get_state()/set_state() (a problem
                                                  sampler, round counters, a reward history) and named array
                                                  pytrees (reference params), saved in every checkpoint and
                                                  restored before the first step; step_fn reads them from
                                                  ctx.arrays

`train(setup, loss_fn, batches, opts, params=...)` is the common case: a loss over numpy batches.
Bit-exact resume holds when step_fn depends only on (state, item, ctx.step, the registered states): the
SIGKILL tests check it for SFT and GRPO.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from storm_jax.train import metrics as M
from storm_jax.train.checkpoint import Checkpointer
from storm_jax.train.losses import LossFn
from storm_jax.train.setup import Setup
from storm_jax.train.state import TrainState
from storm_jax.train.step import batch_sharding

#: Fault injection for the crash/resume tests: SIGKILL this process right after finishing this step number.
FAULT_ENV = "STORM_JAX_FAULT_AT_STEP"


class Stateful(Protocol):
    """A host object whose state is JSON (iterators, samplers, counters)."""

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """Where the run lives, how long it runs, how often it logs and saves."""

    workdir: str
    steps: int
    log_every: int = 1
    save_every: int = 100
    keep: int = 3
    async_save: bool = True
    progress: bool = False
    desc: str = "train"


def loop_options(
    cfg: ml_collections.ConfigDict,
    *,
    steps: int | None = None,
    log_every: int | None = None,
    desc: str = "train",
) -> LoopOptions:
    """LoopOptions from a config's workdir, train and checkpoint sections."""
    return LoopOptions(
        workdir=cfg.workdir,
        steps=int(cfg.train.steps if steps is None else steps),
        log_every=int(cfg.train.log_every if log_every is None else log_every),
        save_every=int(cfg.checkpoint.save_every),
        keep=int(cfg.checkpoint.keep),
        async_save=bool(cfg.checkpoint.async_save),
        progress=bool(cfg.train.progress),
        desc=desc,
    )


@dataclasses.dataclass
class StepContext:
    """What a step may read besides the state and the item: the completed step count, registered arrays."""

    step: int
    arrays: Mapping[str, Any]


StepFn = Callable[[TrainState, Any, StepContext], tuple[TrainState, dict]]


@dataclasses.dataclass
class LoopResult:
    """The end of a run. metrics / eval_metrics are the last logged ones (the saved ones of a finished run)."""

    state: TrainState
    step: int
    start_step: int
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    arrays: dict[str, Any]
    resumed: bool = False
    stopped: bool = False  # SIGTERM / preemption: saved and returned early
    exhausted: bool = False  # the iterator ended before opts.steps


def to_global(batch: Mapping[str, np.ndarray], sharding, keys=None) -> dict[str, jax.Array]:
    """Assemble per-process numpy rows into global arrays sharded over the batch axes (`keys`: a subset)."""
    keys = batch.keys() if keys is None else keys
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


def device_step(train_step, mesh_rules, keys=None) -> StepFn:
    """A StepFn that puts a numpy batch on the mesh and runs the jitted `train_step(state, batch)`."""
    sh = batch_sharding(mesh_rules)
    return lambda state, batch, ctx: train_step(state, to_global(batch, sh, keys))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _iterator_state(batches: Any) -> Any:
    return batches.get_state() if hasattr(batches, "get_state") else None


def _progress_bar(opts: LoopOptions, start: int):
    if not (opts.progress and jax.process_index() == 0):
        return None
    from tqdm import tqdm

    return tqdm(total=opts.steps, initial=start, desc=opts.desc, dynamic_ncols=True)


def run_loop(
    setup: Setup,
    step_fn: StepFn,
    batches: Iterator,
    opts: LoopOptions,
    *,
    init_state: Callable[[], TrainState],
    extra: Mapping[str, Stateful] | None = None,
    arrays: Mapping[str, Any] | None = None,
    init_arrays: Callable[[TrainState], Mapping[str, Any]] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_log: Callable[[int, dict, float], dict] | None = None,
    after_step: Callable[[int, TrainState], dict | None] | None = None,
    postfix: Callable[[dict], dict] | None = None,
    echo: Callable[[str], None] = print,
) -> LoopResult:
    """Run (or resume) `step_fn` over `batches` until opts.steps; returns the final state and metrics.

    Resume restores the state, the iterator's state, every `extra` object's state and the `arrays` (into
    the shardings of the given templates: arrays, or ShapeDtypeStructs carrying shardings). A fresh run
    calls `init_state()` and then `init_arrays(state)` (default: the given arrays as they are).
    Hooks: on_start(start_step) once the state exists (e.g. write config.json); on_log(step, host_metrics,
    seconds_since_last_log) -> the metrics to record, on log steps; after_step(step, state) -> metrics
    written under split "eval" (or None); postfix(metrics) -> progress-bar fields.
    """
    extra = dict(extra or {})
    arrays = dict(arrays or {})
    is_main = jax.process_index() == 0
    ckpt = Checkpointer(
        os.path.join(opts.workdir, "checkpoints"),
        save_every=opts.save_every,
        keep=opts.keep,
        async_save=opts.async_save,
    )
    ckpt.install_sigterm_handler()
    writer = bar = None
    last: dict[str, float] = {}
    last_eval: dict[str, float] = {}

    def saved_extra() -> dict:
        return {
            "metrics": last,
            "eval_metrics": last_eval,
            "states": {k: o.get_state() for k, o in extra.items()},
        }

    try:
        restored = ckpt.restore(setup.restore_target, abstract_arrays=_abstract(arrays) if arrays else None)
        if restored is not None:
            state, start = restored.state, restored.step
            if restored.data_state is not None and hasattr(batches, "set_state"):
                batches.set_state(restored.data_state)
            states = restored.extra.get("states") or {}
            for name, obj in extra.items():
                if name in states:
                    obj.set_state(states[name])
            if restored.arrays is not None:
                arrays.update(restored.arrays)
            elif arrays:  # a checkpoint written before these arrays were registered
                if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(arrays)):
                    raise ValueError(f"{ckpt.directory}/{start} has no {sorted(arrays)} to resume from")
                echo(f"{opts.desc}: checkpoint {start} has no {sorted(arrays)}; using the ones given")
            last = dict(restored.extra.get("metrics") or {})
            last_eval = dict(restored.extra.get("eval_metrics") or {})
            echo(f"{opts.desc}: resumed from {ckpt.directory} at step {start}")
        else:
            state, start = init_state(), 0
            if init_arrays is not None:
                arrays.update(init_arrays(state))
        if on_start is not None:
            on_start(start)
        if start >= opts.steps:
            echo(f"{opts.desc}: already finished at step {start} (the saved metrics are reported)")
        writer = M.MetricsWriter(opts.workdir, enabled=is_main)
        bar = _progress_bar(opts, start)
        fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
        step, stopped, exhausted = start, False, False
        t_log = time.perf_counter()
        while step < opts.steps:
            if ckpt.should_stop(step):
                stopped = True
                break
            try:
                item = next(batches)
            except StopIteration:
                exhausted = True
                echo(f"{opts.desc}: data exhausted at step {step}")
                break
            state, m = step_fn(state, item, StepContext(step, arrays))
            step += 1
            if bar is not None:
                bar.update(1)
            if step % opts.log_every == 0 or step == opts.steps:
                host = {k: float(v) for k, v in jax.device_get(m).items()}  # the loop's only host sync
                last = on_log(step, host, time.perf_counter() - t_log) if on_log is not None else host
                writer.write(step, last)
                if bar is not None:
                    bar.set_postfix(
                        postfix(last) if postfix else {"loss": f"{last.get('loss', float('nan')):.4f}"}
                    )
                t_log = time.perf_counter()
            if after_step is not None:
                ev = after_step(step, state)
                if ev:
                    last_eval = dict(ev)
                    writer.write(step, last_eval, prefix="eval")
            ckpt.save(step, state, data_state=_iterator_state(batches), extra=saved_extra(), arrays=arrays)
            if fault_at and step == fault_at:
                ckpt.wait()  # a deterministic crash point: earlier async saves are on disk
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save(
            step, state, data_state=_iterator_state(batches), extra=saved_extra(), arrays=arrays, force=True
        )
        if stopped:
            echo(f"{opts.desc}: stopped by SIGTERM at step {step}; checkpoint saved")
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    return LoopResult(
        state=state, step=step, start_step=start, metrics=last, eval_metrics=last_eval, arrays=arrays,
        resumed=restored is not None, stopped=stopped, exhausted=exhausted,
    )  # fmt: skip


def train(
    setup: Setup,
    loss_fn: LossFn,
    batches: Iterator[Mapping[str, np.ndarray]],
    opts: LoopOptions,
    *,
    params: Any,
    keys=None,
    **hooks: Any,
) -> LoopResult:
    """Any `loss_fn(params, batch, model_cfg) -> (loss, aux)` over an iterator of numpy batches, from
    `params` (or the workdir's latest checkpoint). hooks: run_loop's keyword arguments (extra, arrays, ...)."""
    step_fn = device_step(setup.train_step(loss_fn), setup.mesh_rules, keys)
    return run_loop(setup, step_fn, batches, opts, init_state=lambda: setup.init_state(params), **hooks)
