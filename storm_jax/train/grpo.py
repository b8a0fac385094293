"""GRPO with the code interpreter in the loop (STORM stage 2), run by the shared loop (storm_jax.train.loop).

One loop step: a batch of problems -> G multi-turn rollouts each (the shared sampler + the real execution pool)
-> outcome rewards (storm_jax.rewards, protocol and eps from config) -> group advantages -> one or more
optimizer passes over mini-batches with the clipped surrogate (storm_jax.train.grpo_loss) through the shared
jitted train step. Nothing here has its own forward pass, sampler, log-prob or checkpoint code.

Log-probs: pi_old defaults to the sampler's raw-model log-probs (temperature 1, untruncated), which are the
behaviour policy's log-probs of the sampled ids; on logging steps the trainer recomputes them with
`token_logprobs` and the largest difference is reported as `logprob_mismatch_max`. The reference (kl_beta > 0)
is the initial params, held once (never given an optimizer state) and saved in every checkpoint.

Weights: the sampler reads `state.params` directly (same device arrays, no host round-trip). Its mesh is the
trainer's mesh, so no resharding is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from storm_jax import verify
from storm_jax.data.benchmarks import read_rows
from storm_jax.execution.answers import Answer
from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel import multihost
from storm_jax.rewards import DEFAULT_CONFIG, ScoringConfig, is_correct
from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, Trajectory, rollout
from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
from storm_jax.train import grpo_multihost
from storm_jax.train.dynamic_sampling import Group, ProblemBatches, ProblemSampler, collect_groups, draw_cap
from storm_jax.train.grpo_loss import GRPOLossConfig, estimate_advantages
from storm_jax.train.loop import FAULT_ENV, loop_options, run_loop
from storm_jax.train.losses import batch_logprobs, make_loss
from storm_jax.train.setup import (
    build_setup,
    check_resume,
    initial_params,
    make_mesh_rules,
    resolve_model_config,
)
from storm_jax.train.step import batch_sharding

__all__ = ["FAULT_ENV", "Problem", "ProblemSampler", "build_batch", "compute_rewards", "load_problems",
           "rollout_config", "engine_config", "rollout_stats", "train_grpo", "run_grpo", "trajectory_answer"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """A verifiable problem: chat messages for the prompt and the ground truth."""

    id: str
    messages: tuple[dict, ...]
    answer: float | None
    answer_status: str | None


def load_problems(path: str, system_prompt: str = "") -> list[Problem]:
    """Problems from a benchmark-schema JSONL (id, question, answer, answer_status); errors name file:line."""
    rows = read_rows(path)
    return [
        Problem(r.id, tuple(verify.problem_messages(r.question, system_prompt)), r.answer, r.answer_status)
        for r in rows
    ]


# ----------------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------------


def trajectory_answer(traj: Trajectory, answer_from: str) -> Answer:
    """The answer a trajectory gives (the shared verifier's rule, storm_jax/verify.py)."""
    return verify.trajectory_answer(traj, answer_from)[0]


def compute_rewards(
    trajs: Sequence[Trajectory],
    problems: Sequence[Problem],
    *,
    protocol: str = "storm",
    scoring: ScoringConfig = DEFAULT_CONFIG,
    answer_from: str = "boxed",
    format_reward: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(rewards, correct) per trajectory: 1 if correct under `protocol`, plus `format_reward` for a boxed answer."""
    correct = np.array(
        [
            is_correct(trajectory_answer(t, answer_from), p.answer, p.answer_status, protocol, scoring)
            for t, p in zip(trajs, problems)
        ],
        dtype=np.float32,
    )
    fmt = np.array([t.answer is not None for t in trajs], np.float32) * float(format_reward)
    return correct + fmt, correct


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def build_batch(
    trajs: Sequence[Trajectory],
    advantages: np.ndarray,
    keep: np.ndarray,
    zero_variance: np.ndarray,
    *,
    seq_len: int,
    num_rows: int,
) -> dict[str, np.ndarray]:
    """Train arrays for trajectories: next-token targets, loss mask on model-written response ids only.

    Row i holds prompt+response of trajs[i] (right-padded to seq_len); rows past len(trajs) are all-padding
    (weight 0) so the batch divides the mesh. old_logprobs come from the sampler's raw-model log-probs.
    """
    B, T = num_rows, seq_len
    out = {
        "tokens": np.zeros((B, T), np.int32),
        "targets": np.zeros((B, T), np.int32),
        "loss_mask": np.zeros((B, T), np.float32),
        "segment_ids": np.zeros((B, T), np.int32),
        "positions": np.zeros((B, T), np.int32),
        "old_logprobs": np.zeros((B, T), np.float32),
        "advantages": np.zeros((B,), np.float32),
        "truncated": np.zeros((B,), np.bool_),
        "zero_variance": np.zeros((B,), np.bool_),
    }
    for i, t in enumerate(trajs):
        ids = list(t.prompt_ids) + list(t.response_ids)
        n = min(len(ids) - 1, T)
        P = len(t.prompt_ids)
        out["tokens"][i, :n] = ids[:n]
        out["targets"][i, :n] = ids[1 : n + 1]
        out["segment_ids"][i, :n] = 1
        out["positions"][i, :n] = np.arange(n)
        # Target index j predicts ids[j+1]; response token r sits at ids[P+r], i.e. target index P-1+r.
        r = np.arange(len(t.response_ids))
        j = P - 1 + r
        ok = j < n
        mask = np.asarray(t.loss_mask, np.float32)[ok]
        if keep[i]:
            out["loss_mask"][i, j[ok]] = mask
        out["old_logprobs"][i, j[ok]] = np.asarray(t.logprobs_raw, np.float32)[ok]
        out["advantages"][i] = advantages[i]
        out["truncated"][i] = t.stop_reason in ("max_tokens",) or n < len(ids) - 1
        out["zero_variance"][i] = zero_variance[i]
    return out


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m


# ----------------------------------------------------------------------------------------------------------------
# Trajectory statistics
# ----------------------------------------------------------------------------------------------------------------


def rollout_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Response length, code blocks, tool error/timeout rates, truncation share."""
    n = max(len(trajs), 1)
    execs = [e for t in trajs for e in t.executions]
    ne = max(len(execs), 1)
    return {
        "response_len": sum(len(t.response_ids) for t in trajs) / n,
        "model_tokens": sum(sum(t.loss_mask) for t in trajs) / n,
        "code_blocks": len(execs) / n,
        "tool_error_rate": sum(e.status not in ("ok", "no_answer", "timeout") for e in execs) / ne,
        "tool_timeout_rate": sum(e.status == "timeout" for e in execs) / ne,
        "truncated_share": sum(t.stop_reason == "max_tokens" for t in trajs) / n,
        "boxed_share": sum(t.answer is not None for t in trajs) / n,
        "exec_seconds": float(sum(e.duration_s for e in execs)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------------------------


def _loss_config(g: ml_collections.ConfigDict) -> GRPOLossConfig:
    return GRPOLossConfig(
        clip_eps_low=g.clip_eps_low,
        clip_eps_high=g.clip_eps_high,
        kl_beta=g.kl_beta,
        aggregation=g.aggregation,
        max_response_len=g.max_response_tokens,
        mask_truncated=g.mask_truncated,
        drop_zero_variance=g.drop_zero_variance,
    )


def rollout_config(
    g: ml_collections.ConfigDict, eos: Sequence[int], *, greedy: bool = False
) -> RolloutConfig:
    """Sampling + tool limits from the grpo config section."""
    sp = SamplingParams(
        temperature=0.0 if greedy else g.temperature,
        top_k=0 if greedy else g.top_k,
        top_p=1.0 if greedy else g.top_p,
        max_new_tokens=g.max_response_tokens,
        eos_ids=tuple(eos),
    )
    return RolloutConfig(
        sampling=sp,
        tools=g.tools,
        max_tool_calls=g.max_tool_calls,
        max_output_chars=g.max_output_chars,
        exec_timeout_s=g.exec_timeout_s,
    )


def engine_config(g: ml_collections.ConfigDict) -> EngineConfig:
    return EngineConfig(num_slots=g.num_slots, max_len=g.max_len, chunk_size=g.decode_chunk)


class History:
    """Per-step reward mean, pass rate and dynamic-sampling counts (checkpointed: a resumed run's curve covers
    every step)."""

    def __init__(self):
        keys = ("reward", "pass_rate", "groups_drawn", "groups_kept")
        self.values: dict[str, list[float]] = {k: [] for k in keys}

    def get_state(self) -> dict:
        return {k: list(v) for k, v in self.values.items()}  # a copy: an async save may serialize it later

    def set_state(self, state: dict) -> None:
        self.values = {k: list(v) for k, v in state.items()}


def zero_variance_line(step: int, m: dict[str, float]) -> str | None:
    """A console line when every group of a step had identical rewards (no policy gradient at all)."""
    n, zv = int(m.get("groups", 0)), int(m.get("zero_variance_groups", 0))
    if not n or zv < n:
        return None
    return (
        f"grpo step {step}: all {n} groups had zero reward variance (reward mean {m.get('reward_mean', 0.0):.3f}): "
        "no policy gradient, the loss is 0"
    )


def train_grpo(
    cfg: ml_collections.ConfigDict,
    *,
    tokenizer: Any,
    executor: Any,
    params: Any = None,
    model_cfg: ModelConfig | None = None,
    mesh_rules: Any = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) GRPO as configured in `cfg` (sections grpo, optim, checkpoint) in cfg.workdir.

    Starts from `params` (else cfg.init_from_hf / init_from_params / a seeded init) unless the workdir has a
    checkpoint. With kl_beta > 0 the starting params are the reference, kept in every checkpoint.
    Returns {"step", "curve": [per-step reward mean], "pass_curve", "groups_drawn", "groups_kept", "params",
    "state", "metrics"}.
    """
    from storm_jax.config import save_config
    from storm_jax.parallel.multihost import ensure_initialized
    from storm_jax.tokenizer import encode_prompt, eos_ids

    ensure_initialized()  # before the mesh touches the backend (a library caller may skip run_grpo)
    g = cfg.grpo
    for line in check_resume(cfg):  # before anything is written
        echo(f"warning: {line}")
    problems = load_problems(g.problems_path, g.system_prompt)
    model_cfg = model_cfg or resolve_model_config(cfg)
    mesh_rules = mesh_rules or make_mesh_rules(cfg)
    P, G = g.problems_per_step, g.group_size
    n_traj = P * G
    dp = int(mesh_rules.mesh.shape["data"] * mesh_rules.mesh.shape["fsdp"])
    mb_rows = g.minibatch_size or n_traj
    if n_traj % mb_rows:
        raise ValueError(
            f"grpo.minibatch_size={mb_rows} does not divide problems_per_step*group_size={n_traj}"
        )
    mb_rows_padded = _round_up(mb_rows, dp * cfg.train.grad_accum)
    updates_per_step = g.ppo_epochs * (n_traj // mb_rows)

    optim_cfg = ml_collections.ConfigDict(cfg.optim.to_dict())
    if g.lr:
        optim_cfg.lr = g.lr
    setup = build_setup(
        cfg, model_cfg=model_cfg, mesh_rules=mesh_rules, optim_cfg=optim_cfg,
        total_steps=g.steps * updates_per_step, params_like=params,
    )  # fmt: skip
    # Chunk the vocabulary projection (bounds [B, T, V] logits); the chunk divides every bucketed length.
    chunk = math.gcd(cfg.train.logprob_chunk, g.seq_bucket) if cfg.train.logprob_chunk else 0
    train_step = setup.train_step(
        make_loss("grpo", loss_cfg=_loss_config(g), mesh_rules=mesh_rules, chunk_size=chunk)
    )
    b_sh = batch_sharding(mesh_rules)
    logp_fn = jax.jit(lambda p, b: batch_logprobs(p, model_cfg, b, mesh_rules=mesh_rules, chunk_size=chunk))

    batches = ProblemBatches(ProblemSampler(len(problems), cfg.seed), P)
    history = History()
    # The reference is the starting policy: a copy of the initial state's params, restored on resume.
    ref_like = {"ref_params": setup.restore_target.params} if g.kl_beta > 0 else {}
    init_ref = (lambda st: {"ref_params": jax.tree.map(jnp.copy, st.params)}) if g.kl_beta > 0 else None
    rcfg = rollout_config(g, eos_ids(tokenizer))
    scoring = ScoringConfig(eps=g.epsilon)
    prompt_cache: dict[int, list[int]] = {}
    sampler: list[Sampler] = []  # built at the first step, around the restored (or initial) state
    # Multi-process: the sampler runs on this process's devices, over its share of the step's problems.
    weights = grpo_multihost.SamplerWeights(mesh_rules, model_cfg)

    def prompt_ids(i: int) -> list[int]:
        if i not in prompt_cache:
            prompt_cache[i] = encode_prompt(
                tokenizer, list(problems[i].messages), enable_thinking=g.enable_thinking
            )
        return prompt_cache[i]

    def step_fn(state, idx, ctx):
        step = ctx.step
        ref_params = ctx.arrays.get("ref_params")
        sampler_params = weights(state.params)
        if not sampler:
            sampler.append(
                Sampler(sampler_params, model_cfg, engine_config(g), mesh_rules=weights.mesh_rules)
            )
        t0 = time.perf_counter()
        stats0 = dict(sampler[0].stats)
        first = [list(idx)]  # the loop's draw; further rounds draw from the same (checkpointed) sampler
        local_trajs: list[Trajectory] = []  # this process's rollouts of every round (for the global stats)

        def draw(k: int) -> list[int]:
            return first.pop()[:k] if first else batches.sampler.next(k)

        def roll(ids: list[int], offset: int) -> list[Group]:
            # Every process draws the same problems and rolls out its contiguous share of them; the gather
            # gives every process all groups, so the keep/draw-more decision is the same everywhere.
            lo, hi = grpo_multihost.local_share(len(ids))
            reqs = [
                RolloutRequest(
                    prompt_ids(i), n=G, seed=int(cfg.seed * 1_000_003 + step * 1009 + offset + k),
                    meta={"problem": i},
                )  # k + offset stays the step's global draw index: seeds do not depend on the process count
                for k, i in enumerate(ids)
                if lo <= k < hi
            ]  # fmt: skip
            got = rollout(sampler_params, model_cfg, tokenizer, reqs, rcfg, executor, sampler=sampler[0])
            got = sorted(got, key=lambda t: (t.group, t.sample_index))
            r, c = compute_rewards(
                got, [problems[ids[lo + t.group]] for t in got], protocol=g.protocol, scoring=scoring,
                answer_from=g.answer_from, format_reward=g.format_reward,
            )  # fmt: skip
            local_trajs.extend(got)
            got, r, c = grpo_multihost.gather_rollouts(got, r, c, group_offset=lo)
            return [Group(i, got[k * G : (k + 1) * G], r[k * G : (k + 1) * G], c[k * G : (k + 1) * G])
                    for k, i in enumerate(ids)]  # fmt: skip

        col = collect_groups(draw, roll, target=P, max_draws=draw_cap(g), dynamic=g.dynamic_sampling)
        t_roll = time.perf_counter() - t0
        stats1 = sampler[0].stats
        roll_time = {f"time_{k}": stats1[k] - stats0[k] for k in ("decode_s", "prefill_s", "tool_wait_s")}
        roll_time["rollout_tokens_per_s"] = (stats1["decoded_tokens"] - stats0["decoded_tokens"]) / max(
            stats1["decode_s"] - stats0["decode_s"], 1e-9
        )  # model-written tokens per second of decode wall time
        roll_stats = grpo_multihost.global_rollout_stats(local_trajs)
        trajs = [t for gr in col.groups for t in gr.trajs]
        rewards = np.concatenate([gr.rewards for gr in col.groups])
        correct = np.concatenate([gr.correct for gr in col.groups])
        idx = [gr.problem for gr in col.groups]  # the problems the step trains on
        if g.shuffle_rewards:  # control experiment: rewards carry no information about the trajectory
            rewards = np.random.default_rng([cfg.seed, step, 7]).permutation(rewards)
        adv = estimate_advantages(
            "grpo" if g.scale_by_std else "dr_grpo",
            rewards.reshape(P, G),
            drop_zero_variance=g.drop_zero_variance,
        )
        A = adv.advantages.reshape(-1)
        keep = adv.keep.reshape(-1)
        zv = adv.zero_variance.reshape(-1)
        grpo_multihost.write_step_record(cfg.workdir, step + 1, idx, rewards, A)
        longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs) - 1
        seq_len = min(_round_up(longest, g.seq_bucket), _round_up(g.max_len, g.seq_bucket))

        # Mini-batches: a seeded shuffle of trajectories, each mini-batch padded to divide the mesh.
        t1 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, step]).permutation(n_traj)
        m_acc: dict[str, float] = {}
        n_upd = 0
        mismatch = float("nan")
        t_lp = 0.0  # old/reference log-prob forwards (host wall, synchronized)
        for epoch in range(g.ppo_epochs):
            for s in range(0, n_traj, mb_rows):
                sel = order[s : s + mb_rows]
                if not keep[sel].any():
                    # every row is masked out (zero-variance groups dropped): the gradient is exactly 0, so the
                    # forward/backward would be pure cost; the update (and the optimizer state) is skipped
                    continue
                nb = build_batch(
                    [trajs[i] for i in sel],
                    A[sel],
                    keep[sel],
                    zv[sel],
                    seq_len=seq_len,
                    num_rows=mb_rows_padded,
                )
                batch = {k: multihost.global_array(v, b_sh) for k, v in nb.items()}  # spans hosts
                t_lp0 = time.perf_counter()
                if epoch == 0 and (g.old_logprobs == "trainer" or step % cfg.train.log_every == 0):
                    trainer_lp = logp_fn(state.params, batch)
                    diff = np.abs(multihost.host_value(trainer_lp) - nb["old_logprobs"])[nb["loss_mask"] > 0]
                    mismatch = max(0.0 if math.isnan(mismatch) else mismatch, float(diff.max(initial=0.0)))
                    if g.old_logprobs == "trainer":
                        batch["old_logprobs"] = trainer_lp
                if ref_params is not None:
                    batch["ref_logprobs"] = jax.block_until_ready(logp_fn(ref_params, batch))
                t_lp += time.perf_counter() - t_lp0
                state, m = train_step(state, batch)
                for k, v in jax.device_get(m).items():
                    m_acc[k] = m_acc.get(k, 0.0) + float(v)
                n_upd += 1
        out = {k: v / n_upd for k, v in m_acc.items()} if n_upd else {"loss": 0.0}
        out["updates"] = float(n_upd)
        out.update(roll_stats)
        out.update({f"adv_{k}" if not k.startswith("adv") else k: v for k, v in adv.stats().items()})
        out.update(
            groups=float(adv.n_groups),
            zero_variance_groups=float(adv.n_zero_variance_groups),
            # over every rollout the step drew: the policy's reward, not the (variance-selected) kept groups'
            reward_mean=float(col.drawn_rewards.mean()),
            pass_rate=float(col.drawn_correct.mean()),
            kept_reward_mean=float(rewards.mean()),
            kept_pass_rate=float(correct.mean()),
            logprob_mismatch_max=mismatch,
            time_rollout_s=t_roll,
            time_train_s=time.perf_counter() - t1,
            time_logprobs_s=t_lp,
            **roll_time,
            seq_len=float(seq_len),
        )
        out.update(col.metrics())
        for key, v in (("reward", out["reward_mean"]), ("pass_rate", out["pass_rate"]),
                       ("groups_drawn", out["groups_drawn"]), ("groups_kept", out["groups_kept"])):  # fmt: skip
            history.values.setdefault(key, []).append(v)
        return state, out

    flat_steps: list[int] = []

    def on_log(step, m, dt):
        line = zero_variance_line(step, m)
        if line:
            flat_steps.append(step)
            echo(line)
        return {k: v for k, v in m.items() if not math.isnan(v)}

    def on_start(start):
        if jax.process_index() == 0:
            save_config(cfg, cfg.workdir)

    res = run_loop(
        setup, step_fn, batches, loop_options(cfg, steps=g.steps, log_every=1, desc="grpo"),
        init_state=lambda: setup.init_state(initial_params(cfg, setup, params)),
        extra={"history": history}, arrays=ref_like, init_arrays=init_ref, on_start=on_start, on_log=on_log,
        postfix=lambda m: {"reward": f"{m['reward_mean']:.3f}", "loss": f"{m.get('loss', float('nan')):.4f}",
                           "zero_var": f"{int(m['zero_variance_groups'])}/{int(m['groups'])}"},
        echo=echo,
    )  # fmt: skip
    if flat_steps:
        echo(f"grpo: {len(flat_steps)} of {res.step - res.start_step} steps had only zero-variance groups")
    if jax.process_index() == 0:
        os.makedirs(cfg.workdir, exist_ok=True)
        with open(os.path.join(cfg.workdir, "reward_curve.json"), "w") as f:
            json.dump(history.values, f)
    return {"step": res.step, "curve": history.values["reward"], "pass_curve": history.values["pass_rate"],
            "groups_drawn": history.values.get("groups_drawn", []), "groups_kept": history.values.get("groups_kept", []),
            "params": res.state.params, "state": res.state, "metrics": res.metrics}  # fmt: skip


def run_grpo(
    cfg: ml_collections.ConfigDict, *, params: Any = None, echo: Callable[[str], None] = print
) -> dict:
    """GRPO as a command: tokenizer and execution pool from the config, then `train_grpo`."""
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
    from storm_jax.parallel.mesh import maybe_initialize_distributed
    from storm_jax.tokenizer import config_tokenizer

    maybe_initialize_distributed()
    tokenizer = config_tokenizer(cfg)
    g = cfg.grpo
    exec_cfg = ExecutionConfig(wall_s=g.exec_timeout_s, cpu_s=g.exec_timeout_s)
    with ExecutionPool(num_workers=g.exec_workers, config=exec_cfg) as pool:
        return train_grpo(cfg, params=params, tokenizer=tokenizer, executor=pool, echo=echo)
