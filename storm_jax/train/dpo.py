"""Weighted DPO trainer: preference pairs + the weighted DPO loss, run by the shared loop (storm_jax.train.loop).

`train_dpo(cfg)` runs (or resumes) a run in `cfg.workdir`:
  workdir/config.json                 the resolved config
  workdir/data/pairs.p<k>.jsonl       process k's training pairs as token rows, with their reference log-probs
  workdir/data/eval_pairs.p<k>.jsonl  the held-out pairs (data.eval_path) likewise
  workdir/checkpoints/<N>             Orbax: {state, pair-iterator state, metrics, reference params when on
                                      the fly}
  workdir/metrics.jsonl, workdir/tb   one line per logged step and eval (and TensorBoard events)

Reference log-probs (dpo.reference, docs/dpo.md):
  precomputed  one batched pass of the frozen reference over all pairs before step 1, stored in the pair files;
               the reference params are then dropped (never in memory while training). A resume reads the
               stored pairs back, so it trains on exactly the same pairs and reference values without any
               reference params.
  on_the_fly   the reference params are a loop `arrays` entry (kept on the mesh, saved in every checkpoint and
               restored on resume) and every step computes the batch's reference log-probs from them.
  none         reference-free: delta = beta * (pi_c - pi_r).
Held-out pairs always get precomputed reference values (once, at the start of a fresh run).

The loss comes from the shared registry (`make_loss("weighted_dpo", ...)`); batches are [P, 2, T] pairs, so
data-parallel sharding and gradient accumulation never split a pair.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from storm_jax.config import ConfigError, save_config
from storm_jax.data import preference as pref
from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import maybe_initialize_distributed
from storm_jax.train import metrics as M
from storm_jax.train.checkpoint import latest_step_on_disk
from storm_jax.train.dpo_loss import dpo_metrics, pair_logps, precompute_reference_logps, weighted_dpo_loss
from storm_jax.train.loop import loop_options, run_loop, to_global
from storm_jax.train.losses import make_loss
from storm_jax.train.setup import Setup, build_setup, check_resume, initial_params, resolve_model_config
from storm_jax.train.step import batch_sharding

PAIR_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "weight")
#: Quantiles of the pair weights logged per window (the weight histogram as scalars: weight_q0 ... q100).
WEIGHT_QUANTILES = (0, 10, 50, 90, 100)


def dpo_loss(cfg: ml_collections.ConfigDict, mesh_rules) -> Any:
    """The configured weighted DPO loss from the shared loss registry."""
    return make_loss(
        "weighted_dpo",
        beta=float(cfg.dpo.beta),
        label_smoothing=float(cfg.dpo.label_smoothing),
        normalize=str(cfg.dpo.normalize),
        reference_free=cfg.dpo.reference == "none",
        chunk_size=int(cfg.train.logprob_chunk),
        mesh_rules=mesh_rules,
    )


# ----------------------------------------------------------------------------------------------------------------
# Pairs
# ----------------------------------------------------------------------------------------------------------------


def stored_pairs_path(workdir: str, name: str = "pairs") -> str:
    """Where this process's pairs (with their reference log-probs) live in a run directory."""
    return os.path.join(os.path.abspath(workdir), "data", f"{name}.p{jax.process_index()}.jsonl")


def _load_kw(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> dict:
    return dict(
        seq_len=cfg.data.seq_len,
        overlong=cfg.data.overlong,
        on_bad_row=cfg.data.on_bad_row,
        enable_thinking=cfg.data.enable_thinking,
        vocab_size=model_cfg.vocab_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _with_tokenizer(cfg, load: Callable[[Any], tuple]) -> tuple:
    """load(None) (token rows need no tokenizer); on text rows, load(the configured tokenizer)."""
    try:
        return load(None)
    except TypeError as e:
        if "need a tokenizer" not in str(e):
            raise
    from storm_jax.tokenizer import config_tokenizer

    return load(config_tokenizer(cfg))


def _fit_given(pairs: Sequence[pref.PreferencePair], seq_len: int, overlong: str) -> list:
    """Given (already tokenized) pairs fitted to seq_len like loaded ones; unusable ones dropped."""
    out = []
    for p in pairs:
        p = pref.fit_pair(p, seq_len, overlong)
        if p is not None and p.chosen.mask[1:].any() and p.rejected.mask[1:].any():
            out.append(p)
    return out


def _source_pairs(cfg, model_cfg, *, rows, pairs, path: str, echo, what: str) -> list:
    """This process's pairs from `pairs`, `rows` or the JSONL file(s) at `path`, fitted to data.seq_len."""
    if pairs is not None:
        out = _fit_given(pairs, cfg.data.seq_len, cfg.data.overlong)
        echo(f"dpo: {what}: {len(out)} of {len(pairs)} given pairs fit data.seq_len={cfg.data.seq_len}")
        return out
    kw = _load_kw(cfg, model_cfg)
    try:
        if rows is not None:
            out, stats = _with_tokenizer(cfg, lambda tok: pref.pairs_from_rows(rows, tok, **kw))
        else:
            out, stats = _with_tokenizer(cfg, lambda tok: pref.load_pairs(path, tok, **kw))
    except (ValueError, OSError) as e:  # a bad row names file:line and field; one line at the CLI
        raise ConfigError(f"{what}: {e}") from None
    echo(f"dpo: {what}: {stats.summary()}")
    return out


def _strip_ref(pairs: list) -> list:
    return [dataclasses.replace(p, ref_chosen_logp=None, ref_rejected_logp=None) for p in pairs]


def _store(path: str, pairs: list, model_cfg: ModelConfig) -> list:
    """Write pairs as token rows and read them back: a fresh run and its resume train on the same values."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    pref.write_token_rows(tmp, pairs)
    os.replace(tmp, path)
    return _read_stored(path, model_cfg)


def _read_stored(path: str, model_cfg: ModelConfig) -> list:
    # Stored pairs are this process's shard and already fitted: no re-sharding, no length rule.
    out, _ = pref.load_pairs(path, vocab_size=model_cfg.vocab_size)
    return out


@dataclasses.dataclass
class _Data:
    train: list
    eval: list | None


def _prepare_pairs(
    cfg, setup: Setup, *, rows, pairs, start_params, ref_params, resuming: bool, echo
) -> _Data:
    """Training and held-out pairs with their reference log-probs, stored under the workdir (or read back)."""
    mc = setup.model_cfg
    train_path, eval_path = stored_pairs_path(cfg.workdir), stored_pairs_path(cfg.workdir, "eval_pairs")
    want_eval = bool(cfg.data.eval_path and cfg.train.eval_every)
    if resuming:
        if not os.path.isfile(train_path):
            raise ConfigError(f"resume of {cfg.workdir}: {train_path} (the run's stored pairs) is missing")
        echo(f"dpo: resume: training on the stored pairs {train_path} (rows/pairs given now are not used)")
        ev = _read_stored(eval_path, mc) if want_eval and os.path.isfile(eval_path) else None
        return _Data(_read_stored(train_path, mc), ev)
    train = _source_pairs(cfg, mc, rows=rows, pairs=pairs, path=cfg.data.path, echo=echo, what="pairs")
    if not train:
        raise ConfigError("data.path: no usable preference pairs (see the counts above)")
    ev = None
    if want_eval:
        ev = _source_pairs(
            cfg, mc, rows=None, pairs=None, path=cfg.data.eval_path, echo=echo, what="eval pairs"
        )
    mode = cfg.dpo.reference
    ref = None

    def with_ref(ps: list, always: bool) -> list:
        nonlocal ref
        if mode == "none" or not ps:
            return _strip_ref(ps)
        if not always and mode == "on_the_fly":
            return _strip_ref(ps)
        if ref_params is None and all(p.has_ref for p in ps):
            return (
                ps  # reference values that came with the pairs (computed by the caller from the same policy)
            )
        if ref is None:
            ref = (
                start_params
                if ref_params is None
                else jax.device_put(ref_params, setup.state_sharding.params)
            )
        return precompute_reference_logps(
            ref, mc, _strip_ref(ps), seq_len=cfg.data.seq_len, batch_pairs=int(cfg.dpo.ref_batch_pairs),
            chunk_size=int(cfg.train.logprob_chunk), mesh_rules=setup.mesh_rules,
            params_sharding=setup.state_sharding.params,
        )  # fmt: skip

    train = _store(train_path, with_ref(train, always=False), mc)
    if ev:
        ev = _store(eval_path, with_ref(ev, always=True), mc)
    return _Data(train, ev or None)


# ----------------------------------------------------------------------------------------------------------------
# Held-out pair metrics
# ----------------------------------------------------------------------------------------------------------------


def make_logps_fn(setup: Setup) -> Callable[[Any, dict], jax.Array]:
    """Jitted `(params, pair batch) -> [P, 2]` summed response log-probs, batch-sharded in and out."""
    b_sh = batch_sharding(setup.mesh_rules)

    def fn(params, batch):
        return pair_logps(
            params, setup.model_cfg, batch, chunk_size=int(setup.cfg.train.logprob_chunk),
            mesh_rules=setup.mesh_rules,
        )  # fmt: skip

    return jax.jit(fn, in_shardings=(setup.state_sharding.params, b_sh), out_shardings=b_sh)


def evaluate_pairs(cfg, logps_fn, params, pairs: list) -> dict[str, float]:
    """Held-out weighted DPO loss and pair accuracy (delta > 0; an exact tie counts 1/2, so a policy equal
    to its reference scores 0.5, not 0) with margins and rewards, over all pairs."""
    batches = pref.eval_batches(pairs, seq_len=cfg.data.seq_len, batch_pairs=int(cfg.dpo.ref_batch_pairs))
    lp, ref, w = [], [], []
    for batch, n in batches:
        keys = [k for k in (*PAIR_KEYS, "ref_logps") if k in batch]
        lp.append(np.asarray(jax.device_get(logps_fn(params, {k: batch[k] for k in keys})))[:n])
        ref.append(batch["ref_logps"][:n] if "ref_logps" in batch else np.zeros((n, 2), np.float32))
        w.append(batch["weight"][:n])
    lp, ref, w = (np.concatenate(x) for x in (lp, ref, w))
    loss, aux = weighted_dpo_loss(
        lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], w, beta=float(cfg.dpo.beta),
        reference_free=cfg.dpo.reference == "none", label_smoothing=float(cfg.dpo.label_smoothing),
        normalize=str(cfg.dpo.normalize),
    )  # fmt: skip
    delta = np.asarray(aux["margins"])
    return {
        "loss": float(loss),
        "pair_accuracy": float(np.mean((delta > 0) + 0.5 * (delta == 0))),
        "margin": float(np.mean(delta)),
        "chosen_reward": float(np.mean(aux["chosen_rewards"])),
        "rejected_reward": float(np.mean(aux["rejected_rewards"])),
        "pairs": float(len(delta)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


def train_dpo(
    cfg: ml_collections.ConfigDict,
    *,
    rows: Sequence[dict] | None = None,
    pairs: Sequence[pref.PreferencePair] | None = None,
    params: Any = None,
    ref_params: Any = None,
    echo: Callable[[str], None] = print,
    devices=None,
) -> dict[str, Any]:
    """Run (or resume) weighted DPO in cfg.workdir; returns {step, loss, accuracy, eval_loss, eval_accuracy,
    tokens_per_s, finite, stopped, resumed, pairs, metrics, eval_metrics, state, setup}.

    rows: in-memory preference rows (TRL-style or token rows, storm_jax.data.preference) replacing
    cfg.data.path; pairs: already tokenized PreferencePairs (this process's), used as given (fitted to
    data.seq_len; reference values they carry are kept unless ref_params is given); params: the start params
    (else cfg.init_from_hf / init_from_params / a seeded init); ref_params: the frozen reference (default: the
    start params). A workdir with a checkpoint resumes from it on its stored pairs; use a new workdir per round.
    """
    if rows is not None and pairs is not None:
        raise ValueError("train_dpo: pass rows or pairs, not both")
    if cfg.recipe != "dpo":
        raise ConfigError(f"recipe: {cfg.recipe!r}, train_dpo runs recipe 'dpo'")
    maybe_initialize_distributed()
    is_main = jax.process_index() == 0
    for line in check_resume(cfg):  # before anything is written: a refused resume leaves the run as it was
        echo(f"warning: {line}")
    model_cfg = resolve_model_config(cfg)
    setup = build_setup(cfg, model_cfg=model_cfg, devices=devices)
    resuming = latest_step_on_disk(cfg.workdir) is not None
    on_the_fly = cfg.dpo.reference == "on_the_fly"
    # Start params only for a fresh run: a resume needs neither them nor (stored values) the reference.
    start = None if resuming else initial_params(cfg, setup, params)
    data = _prepare_pairs(
        cfg, setup, rows=rows, pairs=pairs, start_params=start, ref_params=ref_params, resuming=resuming,
        echo=echo,
    )  # fmt: skip
    dcfg = pref.PreferenceDataConfig(
        path=cfg.data.path or "<pairs>", seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
        seed=cfg.seed, shuffle=cfg.data.shuffle, overlong=cfg.data.overlong,
        num_epochs=cfg.data.num_epochs or None,
    )  # fmt: skip
    batches = pref.make_preference_iterator(dcfg, pairs=data.train)
    keys = (
        (*PAIR_KEYS, "ref_logps")
        if data.train[0].has_ref and cfg.dpo.reference == "precomputed"
        else PAIR_KEYS
    )

    b_sh = batch_sharding(setup.mesh_rules)
    train_step = setup.train_step(dpo_loss(cfg, setup.mesh_rules))
    logps_fn = make_logps_fn(setup)
    arrays, init_arrays = {}, None
    if on_the_fly:
        p_sh = setup.state_sharding.params
        copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=p_sh)
        # A template (restored into on resume); a fresh run fills it with its own copy of the reference.
        arrays = {"ref_params": setup.restore_target.params}
        given_ref = None if ref_params is None else jax.device_put(ref_params, p_sh)

        def init_arrays(state):
            return {"ref_params": copy(state.params if given_ref is None else given_ref)}

    peak, peak_src = M.peak_flops_per_device()
    fpt = M.train_flops_per_token(model_cfg, cfg.data.seq_len)
    n_dev = len(setup.mesh_rules.mesh.devices.flat)
    echo(
        f"dpo: model {M.count_params(model_cfg) / 1e6:.1f}M params, mesh {dict(setup.mesh_rules.mesh.shape)}, "
        f"{len(data.train)} pairs, reference {cfg.dpo.reference}, beta {cfg.dpo.beta}"
    )
    window: dict[str, Any] = {"positions": 0.0, "tokens": 0.0, "weights": []}

    def step_fn(state, np_batch, ctx):
        st = M.batch_stats(np_batch)  # host-side counts: no device sync
        window["positions"] += st["positions"] * jax.process_count()
        window["tokens"] += st["tokens"] * jax.process_count()
        valid = np.asarray(np_batch["loss_mask"]).reshape(len(np_batch["weight"]), -1).any(-1)
        window["weights"].append(np.asarray(np_batch["weight"])[valid])
        batch = to_global(np_batch, b_sh, keys)
        if on_the_fly:
            batch["ref_logps"] = logps_fn(ctx.arrays["ref_params"], batch)
        return train_step(state, batch)

    def on_log(step, m, dt):
        m.update(dpo_metrics(m, float(cfg.dpo.beta)))
        tps = window["positions"] / dt
        m.update(tokens_per_s=tps, real_tokens_per_s=window["tokens"] / dt, mfu=M.mfu(tps, fpt, peak, n_dev))
        w = np.concatenate(window["weights"]) if window["weights"] else np.zeros(1)
        m.update(
            {f"weight_q{q}": float(v) for q, v in zip(WEIGHT_QUANTILES, np.percentile(w, WEIGHT_QUANTILES))}
        )
        window.update(positions=0.0, tokens=0.0, weights=[])
        return m

    def after_step(step, state):
        if not data.eval or not (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
            return None
        ev = evaluate_pairs(cfg, logps_fn, state.params, data.eval)
        echo(f"step {step}: eval loss {ev['loss']:.4f} pair accuracy {ev['pair_accuracy']:.3f}")
        return ev

    def on_start(start_step):
        if is_main:
            save_config(cfg, cfg.workdir)
        if data.eval and start_step == 0:  # the curve's first point: the start policy (= its reference)
            M.MetricsWriter(cfg.workdir, enabled=is_main, tensorboard=False).write(
                0, evaluate_pairs(cfg, logps_fn, start, data.eval), prefix="eval"
            )

    res = run_loop(
        setup, step_fn, batches, loop_options(cfg, desc="dpo"),
        init_state=lambda: setup.init_state(start), arrays=arrays, init_arrays=init_arrays,
        on_start=on_start, on_log=on_log, after_step=after_step, echo=echo,
        postfix=lambda m: {"loss": f"{m['loss']:.4f}", "acc": f"{m['dpo_accuracy']:.2f}",
                           "tok_s": f"{m['tokens_per_s']:.0f}"},
    )  # fmt: skip
    last = res.metrics
    loss = last.get("loss", float("nan"))
    return {
        "step": res.step,
        "loss": loss,
        "accuracy": last.get("dpo_accuracy", float("nan")),
        "eval_loss": res.eval_metrics.get("loss", float("nan")),
        "eval_accuracy": res.eval_metrics.get("pair_accuracy", float("nan")),
        "tokens_per_s": last.get("tokens_per_s", float("nan")),
        "finite": bool(math.isfinite(loss)) if last else True,
        "stopped": res.stopped,
        "resumed": res.resumed,
        "pairs": len(data.train),
        "metrics": last,
        "eval_metrics": res.eval_metrics,
        "state": res.state,
        "setup": setup,
    }
