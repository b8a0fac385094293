"""Supervised fine-tuning: the training loop that ties config, data, state, step, checkpoints and metrics.

`train_sft(cfg)` runs (or resumes) a run in `cfg.workdir`:
  workdir/config.json      the resolved config
  workdir/checkpoints/<N>  Orbax checkpoints {state, data iterator state, extra}
  workdir/metrics.jsonl    one line per logged step (and eval), also TensorBoard events in workdir/tb
The host never waits for the device inside the loop except every `log_every` steps (to log) and when an
async checkpoint snapshots the arrays.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from storm_jax.config import mesh_sizes, model_config, save_config
from storm_jax.models.qwen import ModelConfig, abstract_params, init_params
from storm_jax.parallel.mesh import MeshRules, make_mesh, maybe_initialize_distributed
from storm_jax.train import metrics as M
from storm_jax.train.checkpoint import Checkpointer, abstract_with_shardings, restore_params
from storm_jax.train.losses import make_sft_loss
from storm_jax.train.optim import make_optimizer
from storm_jax.train.state import TrainState, abstract_train_state, init_train_state, state_shardings
from storm_jax.train.step import batch_sharding, make_eval_step, make_train_step

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")

#: Fault injection for the crash/resume test: SIGKILL this process right after finishing this step number.
FAULT_ENV = "STORM_JAX_FAULT_AT_STEP"


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


class SyntheticSFTIterator:
    """Deterministic random packed batches (benchmarks, tests): batch i depends only on (seed, i, process).

    Same dict layout as storm_jax.data.pipeline; get_state()/set_state() make it resumable.
    """

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int, seed: int, process_index: int = 0):
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.seed, self.process_index, self.index = seed, process_index, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index, self.process_index])
        self.index += 1
        B, T = self.batch_size, self.seq_len
        out = {k: np.zeros((B, T), np.int32) for k in BATCH_KEYS}
        for b in range(B):
            t, d = 0, 1
            while t < T - 1:
                n = int(min(rng.integers(T // 4, T + 1), T - t))
                doc = rng.integers(0, self.vocab_size, n + 1, dtype=np.int32)
                out["tokens"][b, t : t + n] = doc[:n]
                out["targets"][b, t : t + n] = doc[1:]
                out["segment_ids"][b, t : t + n] = d
                out["positions"][b, t : t + n] = np.arange(n)
                m = np.ones(n, np.int32)
                m[: max(n // 4, 1)] = 0  # a "prompt" with no loss
                out["loss_mask"][b, t : t + n] = m
                t, d = t + n, d + 1
        return out

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def make_data_iterator(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, *, path: str, train: bool):
    """The per-process iterator of numpy batches (local rows = batch_size / process_count)."""
    pc, pi = jax.process_count(), jax.process_index()
    local_batch = cfg.data.batch_size // pc
    if cfg.data.source == "synthetic":
        seed = cfg.seed if train else cfg.seed + 1_000_003
        return SyntheticSFTIterator(model_cfg.vocab_size, cfg.data.seq_len, local_batch, seed, pi)
    from storm_jax.data.pipeline import SFTDataConfig, make_sft_iterator
    from storm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer_path or cfg.init_from_hf or None)
    dcfg = SFTDataConfig(
        path=path,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        shuffle=cfg.data.shuffle if train else False,
        pack=cfg.data.pack,
        overlong=cfg.data.overlong,
        on_bad_row=cfg.data.on_bad_row,
        enable_thinking=cfg.data.enable_thinking,
        num_epochs=(cfg.data.num_epochs or None) if train else 1,
    )
    return make_sft_iterator(dcfg, tok, process_index=pi, process_count=pc)


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assemble per-process numpy rows into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in BATCH_KEYS}


# ----------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built from a config (also used by bench/ and the AOT sizing script)."""

    cfg: ml_collections.ConfigDict
    model_cfg: ModelConfig
    mesh_rules: MeshRules
    optimizer: Any
    schedule: Any
    state_sharding: TrainState
    abstract_state: TrainState
    train_step: Any
    loss_fn: Any


def build_run(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig | None = None, devices=None) -> Run:
    """Mesh, optimizer, shardings and the jitted step for a config (no arrays allocated)."""
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp, tensor = mesh_sizes(cfg, len(devices))
    rules = MeshRules(make_mesh(data, fsdp, tensor, devices=devices))
    model_cfg = model_cfg or model_config(cfg)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    abs_state = abstract_train_state(model_cfg, optimizer, abstract_params(model_cfg))
    sh = state_shardings(abs_state, model_cfg, rules)
    loss_fn = make_sft_loss(
        normalization=cfg.train.loss_norm, chunk_size=cfg.train.logprob_chunk, mesh_rules=rules
    )
    step = make_train_step(
        loss_fn,
        model_cfg,
        optimizer,
        schedule,
        mesh_rules=rules,
        state_sharding=sh,
        grad_accum=cfg.train.grad_accum,
    )
    return Run(cfg, model_cfg, rules, optimizer, schedule, sh, abs_state, step, loss_fn)


def initial_params(cfg: ml_collections.ConfigDict, run: Run) -> Any:
    """Params to start from: an HF checkpoint, an Orbax params checkpoint, or a seeded random init."""
    sh = run.state_sharding.params
    if cfg.init_from_hf:
        from storm_jax.models.hf import load_hf_checkpoint

        _, params = load_hf_checkpoint(
            cfg.init_from_hf, dtype=run.model_cfg.param_dtype, mesh_rules=run.mesh_rules
        )
        return jax.device_put(params, sh)
    if cfg.init_from_params:
        return restore_params(cfg.init_from_params, abstract_with_shardings(run.abstract_state.params, sh))
    init = jax.jit(lambda k: init_params(run.model_cfg, k), out_shardings=sh)
    return init(jax.random.key(cfg.seed))


def resolve_model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """cfg.model, or the HF checkpoint's architecture with cfg.model's numerics (dtype, param_dtype, remat)."""
    mc = model_config(cfg)
    if cfg.init_from_hf:
        from storm_jax.models.hf import load_hf_config

        hf = load_hf_config(cfg.init_from_hf)
        return hf.replace(dtype=mc.dtype, param_dtype=mc.param_dtype, remat=mc.remat)
    return mc


# ----------------------------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------------------------


def _evaluate(cfg, run: Run, eval_step, params, sharding) -> float:
    it = make_data_iterator(cfg, run.model_cfg, path=cfg.data.eval_path, train=False)
    tot, wt = 0.0, 0.0
    for _ in range(cfg.train.eval_batches):
        try:
            b = next(it)
        except StopIteration:
            break
        lw, w = eval_step(params, to_global(b, sharding))
        tot += float(lw)
        wt += float(w)
    return tot / wt if wt else float("nan")


def train_sft(cfg: ml_collections.ConfigDict, *, echo=print, devices=None) -> dict[str, Any]:
    """Run (or resume) SFT as configured; returns a summary {step, loss, eval_loss, tokens_per_s, ...}."""
    maybe_initialize_distributed()
    is_main = jax.process_index() == 0
    workdir = cfg.workdir
    model_cfg = resolve_model_config(cfg)
    run = build_run(cfg, model_cfg, devices=devices)
    b_sh = batch_sharding(run.mesh_rules)
    n_dev = len(run.mesh_rules.mesh.devices.flat)
    if is_main:
        save_config(cfg, workdir)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=cfg.checkpoint.save_every,
        keep=cfg.checkpoint.keep,
        async_save=cfg.checkpoint.async_save,
    )
    ckpt.install_sigterm_handler()
    data_it = make_data_iterator(cfg, model_cfg, path=cfg.data.path, train=True)
    restored = ckpt.restore_latest(abstract_with_shardings(run.abstract_state, run.state_sharding))
    if restored is not None:
        start, state, data_state, _extra = restored
        if data_state is not None:
            data_it.set_state(data_state)
        echo(f"resumed from {ckpt.directory} at step {start}")
    else:
        start = 0
        params = initial_params(cfg, run)
        state = jax.jit(
            lambda p: init_train_state(p, run.optimizer, cfg.seed), out_shardings=run.state_sharding
        )(params)

    eval_step = None
    if cfg.data.eval_path and cfg.train.eval_every:
        eval_step = make_eval_step(
            run.loss_fn, model_cfg, mesh_rules=run.mesh_rules, params_sharding=run.state_sharding.params
        )
    writer = M.MetricsWriter(workdir, enabled=is_main)
    peak, peak_src = M.peak_flops_per_device()
    fpt = M.train_flops_per_token(model_cfg, cfg.data.seq_len)
    echo(
        f"model {M.count_params(model_cfg) / 1e6:.1f}M params, mesh {dict(run.mesh_rules.mesh.shape)}, "
        f"{fpt / 1e6:.1f} MFLOP/token, peak {peak / 1e12:.3f} TFLOP/s/device ({peak_src})"
    )
    fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    total = cfg.train.steps
    bar = None
    if is_main and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="sft", dynamic_ncols=True)
    window = {"positions": 0.0, "tokens": 0.0, "loss_tokens": 0.0}
    t_window = time.perf_counter()
    last: dict[str, float] = {}
    eval_loss = float("nan")
    step = start
    stopped = False
    try:
        while step < total:
            if ckpt.should_stop(step):
                stopped = True
                break
            try:
                np_batch = next(data_it)
            except StopIteration:
                echo(f"data exhausted at step {step}")
                break
            st = M.batch_stats(np_batch)
            for k in window:
                window[k] += st[k] * jax.process_count()
            state, m = run.train_step(state, to_global(np_batch, b_sh))
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.train.log_every == 0 or step == total:
                m = jax.device_get(m)  # the only host sync of the loop
                dt = time.perf_counter() - t_window
                tps = window["positions"] / dt
                last = {k: float(v) for k, v in m.items()}
                last.update(
                    tokens_per_s=tps,
                    real_tokens_per_s=window["tokens"] / dt,
                    mfu=M.mfu(tps, fpt, peak, n_dev),
                    packing_efficiency=window["tokens"] / max(window["positions"], 1.0),
                    masked_share=1.0 - window["loss_tokens"] / max(window["tokens"], 1.0),
                )
                writer.write(step, last)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{tps:.0f}", mfu=f"{last['mfu']:.3f}")
                window = dict.fromkeys(window, 0.0)
                t_window = time.perf_counter()
            ckpt.save(step, state, data_state=data_it.get_state(), extra={"loss": last.get("loss")})
            if eval_step is not None and (step % cfg.train.eval_every == 0 or step == total):
                eval_loss = _evaluate(cfg, run, eval_step, state.params, b_sh)
                writer.write(step, {"loss": eval_loss}, prefix="eval")
                echo(f"step {step}: eval loss {eval_loss:.4f}")
            if fault_at and step == fault_at:
                ckpt.wait()  # make the crash point deterministic: earlier async saves are on disk
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save(step, state, data_state=data_it.get_state(), extra={"loss": last.get("loss")}, force=True)
    finally:
        ckpt.close()
        writer.close()
        if bar is not None:
            bar.close()
    if stopped:
        echo(f"stopped by SIGTERM at step {step}; checkpoint saved")
    loss = last.get("loss", float("nan"))
    return {
        "step": step,
        "loss": loss,
        "eval_loss": eval_loss,
        "stopped": stopped,
        "tokens_per_s": last.get("tokens_per_s", float("nan")),
        "mfu": last.get("mfu", float("nan")),
        "finite": bool(math.isfinite(loss)) if last else True,
        "state": state,
        "run": run,
    }


def load_run_state(workdir: str, *, step: int | None = None, devices=None):
    """(cfg, model_cfg, state, step) of a run directory's latest (or given) checkpoint, via its config.json."""
    from storm_jax.config import config_from_json

    cfg = config_from_json(os.path.join(workdir, "config.json"))
    # Load on whatever devices are here (Orbax reshards): a pod run can be exported on one host.
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    model_cfg = resolve_model_config(cfg)
    run = build_run(cfg, model_cfg, devices=devices)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=1, keep=cfg.checkpoint.keep, async_save=False
    )
    try:
        target = abstract_with_shardings(run.abstract_state, run.state_sharding)
        if step is None:
            out = ckpt.restore_latest(target)
            if out is None:
                raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint")
            step, state = out[0], out[1]
        else:
            import orbax.checkpoint as ocp

            from storm_jax.train.checkpoint import _state_to_tree, _tree_to_state

            res = ckpt.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_state_to_tree(target)))
            )
            state = _tree_to_state(res["state"])
    finally:
        ckpt.close()
    return cfg, model_cfg, state, step
