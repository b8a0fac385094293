"""Supervised fine-tuning: config + data + the SFT loss, run by the shared loop (storm_jax.train.loop).

`train_sft(cfg)` runs (or resumes) a run in `cfg.workdir`:
  workdir/config.json      the resolved config
  workdir/checkpoints/<N>  Orbax checkpoints {state, data iterator state, extra (final metrics)}
  workdir/metrics.jsonl    one line per logged step (and eval), also TensorBoard events in workdir/tb
The host never waits for the device inside the loop except every `log_every` steps (to log) and when an
async checkpoint snapshots the arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from storm_jax.config import save_config
from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import maybe_initialize_distributed
from storm_jax.train import metrics as M
from storm_jax.train.loop import FAULT_ENV, loop_options, run_loop, to_global
from storm_jax.train.losses import make_loss
from storm_jax.train.setup import (
    Setup,
    build_setup,
    check_resume,
    initial_params,
    load_run_state,
    resolve_model_config,
)
from storm_jax.train.step import batch_sharding, make_eval_step

__all__ = ["BATCH_KEYS", "FAULT_ENV", "Run", "SyntheticSFTIterator", "build_run", "initial_params",
           "load_run_state", "make_data_iterator", "resolve_model_config", "to_global", "train_sft"]  # fmt: skip

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


class SyntheticSFTIterator:
    """Deterministic random packed batches (benchmarks, tests).

    Row r of global batch i depends only on (seed, i, r); process p of a job yields the global rows
    [p * batch_size, (p + 1) * batch_size) (batch_size is the per-process row count), so the global batch
    that `to_global` assembles is the same for any process count. Same dict layout as
    storm_jax.data.pipeline; get_state()/set_state() make it resumable.
    """

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int, seed: int, process_index: int = 0):
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.seed, self.process_index, self.index = seed, process_index, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        i, first_row = self.index, self.process_index * self.batch_size
        self.index += 1
        B, T = self.batch_size, self.seq_len
        out = {k: np.zeros((B, T), np.int32) for k in BATCH_KEYS}
        for b in range(B):
            rng = np.random.default_rng([self.seed, i, first_row + b])
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
    from storm_jax.tokenizer import config_tokenizer

    tok = config_tokenizer(cfg, model_cfg.vocab_size)
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


# ----------------------------------------------------------------------------------------------------------------
# Setup (kept for bench/ and the AOT sizing script: a Setup plus the jitted SFT step)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run(Setup):
    """A Setup with the SFT loss and its jitted step."""

    train_step: Any = None
    loss_fn: Any = None


def sft_loss(cfg: ml_collections.ConfigDict, mesh_rules) -> Any:
    """The configured SFT loss (train.loss_norm, train.logprob_chunk) from the loss registry."""
    return make_loss(
        "sft",
        normalization=cfg.train.loss_norm,
        chunk_size=cfg.train.logprob_chunk,
        mesh_rules=mesh_rules,
        skip_masked_chunks=bool(cfg.train.get("skip_masked_chunks", False)),
        fused=bool(cfg.train.get("fused_head", False)),
    )


def build_run(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig | None = None, devices=None) -> Run:
    """Mesh, optimizer, shardings and the jitted SFT step for a config (no arrays allocated)."""
    setup = build_setup(cfg, model_cfg=model_cfg, devices=devices)
    loss_fn = sft_loss(cfg, setup.mesh_rules)
    fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(Setup)}
    return Run(**fields, train_step=setup.train_step(loss_fn), loss_fn=loss_fn)


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


def _evaluate(cfg, run: Run, eval_step, params, sharding) -> float:
    it = make_data_iterator(cfg, run.model_cfg, path=cfg.data.eval_path, train=False)
    tot, wt = 0.0, 0.0
    for _ in range(cfg.train.eval_batches):
        try:
            b = next(it)
        except StopIteration:
            break
        lw, w = eval_step(params, to_global(b, sharding, BATCH_KEYS))
        tot += float(lw)
        wt += float(w)
    return tot / wt if wt else float("nan")


def _with_rows(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of cfg reading in-memory rows: they are written to <workdir>/data/ (the run's record of what it
    trained on, and what a resume of that workdir reads again)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.source = "jsonl"
    cfg.data.path = os.path.join(os.path.abspath(cfg.workdir), "data", f"rows.p{jax.process_index()}.jsonl")
    return cfg


def _write_rows(path: str, rows: Sequence[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def train_sft(
    cfg: ml_collections.ConfigDict,
    *,
    rows: Sequence[dict] | None = None,
    params: Any = None,
    batches: Iterator[dict] | None = None,
    echo: Callable[[str], None] = print,
    devices=None,
) -> dict[str, Any]:
    """Run (or resume) SFT in cfg.workdir; returns {step, loss, eval_loss, tokens_per_s, mfu, finite, stopped,
    metrics, state, run}.

    As a library function: `rows` (SFT rows as dicts, the JSONL schema) replace cfg.data.path, `batches`
    (numpy batches) replace the data pipeline, `params` replace cfg's initialization. A workdir with a
    checkpoint resumes from it instead; a finished run reports its saved final metrics.
    """
    maybe_initialize_distributed()
    is_main = jax.process_index() == 0
    if rows is not None:
        cfg = _with_rows(cfg)
    for line in check_resume(cfg):  # before anything is written: a refused resume leaves the run as it was
        echo(f"warning: {line}")
    if rows is not None:
        _write_rows(cfg.data.path, rows)
    model_cfg = resolve_model_config(cfg)
    run = build_run(cfg, model_cfg, devices=devices)
    b_sh = batch_sharding(run.mesh_rules)
    n_dev = len(run.mesh_rules.mesh.devices.flat)
    data_it = (
        batches if batches is not None else make_data_iterator(cfg, model_cfg, path=cfg.data.path, train=True)
    )

    eval_step = None
    if cfg.data.eval_path and cfg.train.eval_every:
        eval_step = make_eval_step(
            run.loss_fn, model_cfg, mesh_rules=run.mesh_rules, params_sharding=run.state_sharding.params
        )
    peak, peak_src = M.peak_flops_per_device()
    fpt = M.train_flops_per_token(model_cfg, cfg.data.seq_len)
    echo(
        f"model {M.count_params(model_cfg) / 1e6:.1f}M params, mesh {dict(run.mesh_rules.mesh.shape)}, "
        f"{fpt / 1e6:.1f} MFLOP/token, peak {peak / 1e12:.3f} TFLOP/s/device ({peak_src})"
    )
    total = cfg.train.steps
    window = dict.fromkeys(("positions", "tokens", "loss_tokens"), 0.0)

    def step_fn(state, np_batch, ctx):
        st = M.batch_stats(np_batch)  # host-side counts: no device sync
        for k in window:
            window[k] += st[k] * jax.process_count()
        return run.train_step(state, to_global(np_batch, b_sh, BATCH_KEYS))

    def on_log(step, m, dt):
        tps = window["positions"] / dt
        m.update(
            tokens_per_s=tps,
            real_tokens_per_s=window["tokens"] / dt,
            mfu=M.mfu(tps, fpt, peak, n_dev),
            packing_efficiency=window["tokens"] / max(window["positions"], 1.0),
            masked_share=1.0 - window["loss_tokens"] / max(window["tokens"], 1.0),
        )
        window.update(dict.fromkeys(window, 0.0))
        return m

    def after_step(step, state):
        if eval_step is None or not (step % cfg.train.eval_every == 0 or step == total):
            return None
        eval_loss = _evaluate(cfg, run, eval_step, state.params, b_sh)
        echo(f"step {step}: eval loss {eval_loss:.4f}")
        return {"loss": eval_loss}

    def on_start(start):
        if is_main:
            save_config(cfg, cfg.workdir)

    res = run_loop(
        run, step_fn, data_it, loop_options(cfg, desc="sft"),
        init_state=lambda: run.init_state(initial_params(cfg, run, params)),
        on_start=on_start, on_log=on_log, after_step=after_step, echo=echo,
        postfix=lambda m: {"loss": f"{m['loss']:.4f}", "tok_s": f"{m['tokens_per_s']:.0f}", "mfu": f"{m['mfu']:.3f}"},
    )  # fmt: skip
    last = res.metrics
    loss = last.get("loss", float("nan"))
    return {
        "step": res.step,
        "loss": loss,
        "eval_loss": res.eval_metrics.get("loss", float("nan")),
        "stopped": res.stopped,
        "tokens_per_s": last.get("tokens_per_s", float("nan")),
        "mfu": last.get("mfu", float("nan")),
        "finite": bool(math.isfinite(loss)) if last else True,
        "metrics": last,
        "state": res.state,
        "run": run,
    }
