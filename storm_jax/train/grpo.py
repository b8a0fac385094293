"""GRPO with the code interpreter in the loop (STORM stage 2).

One step: a batch of problems -> G multi-turn rollouts each (the shared sampler + the real execution pool)
-> outcome rewards (storm_jax.rewards, protocol and eps from config) -> group advantages -> one or more
optimizer passes over mini-batches with the clipped surrogate (storm_jax.train.grpo_loss) through the shared
jitted train step. Nothing here has its own forward pass, sampler, log-prob or checkpoint code.

Log-probs: pi_old defaults to the sampler's raw-model log-probs (temperature 1, untruncated), which are the
behaviour policy's log-probs of the sampled ids; on logging steps the trainer recomputes them with
`token_logprobs` and the largest difference is reported as `logprob_mismatch_max`. The reference (kl_beta > 0)
is the initial params, held once and never given an optimizer state.

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

from storm_jax.data.benchmarks import read_rows
from storm_jax.execution.answers import Answer
from storm_jax.models.qwen import ModelConfig
from storm_jax.rewards import DEFAULT_CONFIG, ScoringConfig, is_correct
from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, Trajectory, rollout
from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
from storm_jax.train import metrics as M
from storm_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from storm_jax.train.grpo_loss import GRPOLossConfig, group_advantages, make_grpo_loss
from storm_jax.train.logprobs import token_logprobs
from storm_jax.train.optim import make_optimizer
from storm_jax.train.state import abstract_train_state, init_train_state, state_shardings
from storm_jax.train.step import batch_sharding, make_train_step

#: Fault injection for resume tests: SIGKILL this process right after finishing this GRPO step.
FAULT_ENV = "STORM_JAX_FAULT_AT_STEP"


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
    sys_msg = ({"role": "system", "content": system_prompt},) if system_prompt else ()
    return [
        Problem(r.id, sys_msg + ({"role": "user", "content": r.question},), r.answer, r.answer_status)
        for r in rows
    ]


class ProblemSampler:
    """Seeded epoch permutations of problem indices; its state goes into checkpoints."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("no problems to sample from")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self._perm()
            take = min(k - len(out), self.n - self.pos)
            out.extend(int(i) for i in perm[self.pos : self.pos + take])
            self.pos += take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


# ----------------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------------


def trajectory_answer(traj: Trajectory, answer_from: str) -> Answer:
    """The answer a trajectory gives: its final boxed answer, the last executed program's, or boxed-then-execution."""
    if answer_from not in ("boxed", "execution", "auto"):
        raise ValueError(f"answer_from={answer_from!r}: expected boxed, execution or auto")
    if answer_from in ("boxed", "auto") and traj.answer is not None:
        return traj.answer
    if answer_from in ("execution", "auto"):
        for ex in reversed(traj.executions):
            if ex.status == "ok" and ex.answer is not None:
                return ex.answer
    return None


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


def train_grpo(
    cfg: ml_collections.ConfigDict,
    *,
    model_cfg: ModelConfig,
    params: Any,
    mesh_rules: Any,
    tokenizer: Any,
    executor: Any,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) GRPO from `params` as configured in `cfg` (sections grpo, optim, checkpoint).

    Returns {"step", "curve": [per-step reward mean], "pass_curve", "params", "metrics": last metrics}.
    """
    from storm_jax.tokenizer import encode_prompt, eos_ids

    g = cfg.grpo
    workdir = cfg.workdir
    problems = load_problems(g.problems_path, g.system_prompt)
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
    optimizer, schedule = make_optimizer(optim_cfg, g.steps * updates_per_step)
    abs_state = abstract_train_state(model_cfg, optimizer, jax.eval_shape(lambda p: p, params))
    sh = state_shardings(abs_state, model_cfg, mesh_rules)
    loss_cfg = _loss_config(g)
    # Chunk the vocabulary projection (bounds [B, T, V] logits); the chunk divides every bucketed length.
    chunk = math.gcd(cfg.train.logprob_chunk, g.seq_bucket) if cfg.train.logprob_chunk else 0
    loss_fn = make_grpo_loss(loss_cfg, mesh_rules, chunk_size=chunk)
    train_step = make_train_step(
        loss_fn,
        model_cfg,
        optimizer,
        schedule,
        mesh_rules=mesh_rules,
        state_sharding=sh,
        grad_accum=cfg.train.grad_accum,
    )
    b_sh = batch_sharding(mesh_rules)
    logp_fn = jax.jit(
        lambda p, b: token_logprobs(
            p, model_cfg, b["tokens"], b["targets"], segment_ids=b["segment_ids"], positions=b["positions"],
            mesh_rules=mesh_rules, chunk_size=chunk,
        )
    )  # fmt: skip

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=cfg.checkpoint.save_every,
        keep=cfg.checkpoint.keep,
        async_save=cfg.checkpoint.async_save,
    )
    ckpt.install_sigterm_handler()
    psampler = ProblemSampler(len(problems), cfg.seed)
    history: dict[str, list[float]] = {"reward": [], "pass_rate": []}
    restored = ckpt.restore_latest(abstract_with_shardings(abs_state, sh))
    ref_params = None
    if restored is not None:
        start, state, data_state, extra = restored
        psampler.set_state(data_state)
        history = {k: list(v) for k, v in (extra.get("history") or history).items()}
        echo(f"grpo: resumed from {ckpt.directory} at step {start}")
    else:
        start = 0
        state = jax.jit(lambda p: init_train_state(p, optimizer, cfg.seed), out_shardings=sh)(params)
    if g.kl_beta > 0:
        # The reference is the starting policy; on resume it is re-read from the run's init (kept on disk).
        ref_params = jax.tree.map(jnp.copy, params)

    tok_eos = eos_ids(tokenizer)
    rcfg = rollout_config(g, tok_eos)
    sampler = Sampler(state.params, model_cfg, engine_config(g), mesh_rules=mesh_rules)
    scoring = ScoringConfig(eps=g.epsilon)
    writer = M.MetricsWriter(workdir, enabled=jax.process_index() == 0)
    prompt_cache: dict[int, list[int]] = {}

    def prompt_ids(i: int) -> list[int]:
        if i not in prompt_cache:
            prompt_cache[i] = encode_prompt(
                tokenizer, list(problems[i].messages), enable_thinking=g.enable_thinking
            )
        return prompt_cache[i]

    bar = None
    if jax.process_index() == 0 and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=g.steps, initial=start, desc="grpo", dynamic_ncols=True)
    fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    step = start
    last: dict[str, float] = {}
    try:
        while step < g.steps:
            if ckpt.should_stop(step):
                echo(f"grpo: stopped by SIGTERM at step {step}; checkpoint saved")
                break
            t0 = time.perf_counter()
            idx = psampler.next(P)
            reqs = [
                RolloutRequest(
                    prompt_ids(i), n=G, seed=int(cfg.seed * 1_000_003 + step * 1009 + k), meta={"problem": i}
                )
                for k, i in enumerate(idx)
            ]
            trajs = rollout(state.params, model_cfg, tokenizer, reqs, rcfg, executor, sampler=sampler)
            t_roll = time.perf_counter() - t0
            probs = [problems[idx[t.group]] for t in trajs]
            rewards, correct = compute_rewards(
                trajs, probs, protocol=g.protocol, scoring=scoring, answer_from=g.answer_from,
                format_reward=g.format_reward,
            )  # fmt: skip
            if g.shuffle_rewards:  # control experiment: rewards carry no information about the trajectory
                rewards = np.random.default_rng([cfg.seed, step, 7]).permutation(rewards)
            adv = group_advantages(
                rewards.reshape(P, G), scale_by_std=g.scale_by_std, drop_zero_variance=g.drop_zero_variance
            )
            A = adv.advantages.reshape(-1)
            keep = adv.keep.reshape(-1)
            zv = adv.zero_variance.reshape(-1)
            longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs) - 1
            seq_len = min(_round_up(longest, g.seq_bucket), _round_up(g.max_len, g.seq_bucket))

            # Mini-batches: a seeded shuffle of trajectories, each mini-batch padded to divide the mesh.
            t1 = time.perf_counter()
            order = np.random.default_rng([cfg.seed, step]).permutation(n_traj)
            m_acc: dict[str, float] = {}
            n_upd = 0
            mismatch = float("nan")
            for epoch in range(g.ppo_epochs):
                for s in range(0, n_traj, mb_rows):
                    sel = order[s : s + mb_rows]
                    nb = build_batch(
                        [trajs[i] for i in sel],
                        A[sel],
                        keep[sel],
                        zv[sel],
                        seq_len=seq_len,
                        num_rows=mb_rows_padded,
                    )
                    batch = {k: jax.device_put(v, b_sh) for k, v in nb.items()}
                    if epoch == 0 and (g.old_logprobs == "trainer" or step % cfg.train.log_every == 0):
                        trainer_lp = logp_fn(state.params, batch)
                        diff = np.abs(np.asarray(trainer_lp) - nb["old_logprobs"])[nb["loss_mask"] > 0]
                        mismatch = max(
                            0.0 if math.isnan(mismatch) else mismatch, float(diff.max(initial=0.0))
                        )
                        if g.old_logprobs == "trainer":
                            batch["old_logprobs"] = trainer_lp
                    if ref_params is not None:
                        batch["ref_logprobs"] = logp_fn(ref_params, batch)
                    state, m = train_step(state, batch)
                    m = jax.device_get(m)
                    for k, v in m.items():
                        m_acc[k] = m_acc.get(k, 0.0) + float(v)
                    n_upd += 1
            t_train = time.perf_counter() - t1
            step += 1
            last = {k: v / n_upd for k, v in m_acc.items()}
            last.update(rollout_stats(trajs))
            last.update({f"adv_{k}" if not k.startswith("adv") else k: v for k, v in adv.stats().items()})
            last.update(
                reward_mean=float(rewards.mean()),
                pass_rate=float(correct.mean()),
                logprob_mismatch_max=mismatch,
                time_rollout_s=t_roll,
                time_train_s=t_train,
                seq_len=float(seq_len),
            )
            history["reward"].append(float(rewards.mean()))
            history["pass_rate"].append(float(correct.mean()))
            writer.write(
                step, {k: v for k, v in last.items() if not (isinstance(v, float) and math.isnan(v))}
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    reward=f"{last['reward_mean']:.3f}", loss=f"{last.get('loss', float('nan')):.4f}"
                )
            ckpt.save(step, state, data_state=psampler.get_state(), extra={"history": history})
            if fault_at and step == fault_at:
                import signal

                ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save(step, state, data_state=psampler.get_state(), extra={"history": history}, force=True)
    finally:
        ckpt.close()
        writer.close()
        if bar is not None:
            bar.close()
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "reward_curve.json"), "w") as f:
            json.dump(history, f)
    return {"step": step, "curve": history["reward"], "pass_curve": history["pass_rate"], "params": state.params,
            "metrics": last}  # fmt: skip


def run_grpo(
    cfg: ml_collections.ConfigDict, *, params: Any = None, echo: Callable[[str], None] = print
) -> dict:
    """GRPO as a command: mesh, model, tokenizer and execution pool from the config, then `train_grpo`.

    Starts from `params` if given, else from cfg.init_from_hf / cfg.init_from_params / a seeded random init.
    """
    from storm_jax.config import save_config
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
    from storm_jax.parallel.mesh import maybe_initialize_distributed
    from storm_jax.tokenizer import load_tokenizer
    from storm_jax.train.sft import build_run, initial_params, resolve_model_config

    maybe_initialize_distributed()
    model_cfg = resolve_model_config(cfg)
    run = build_run(cfg, model_cfg)
    if params is None:
        params = initial_params(cfg, run)
    tokenizer = load_tokenizer(cfg.data.tokenizer_path or cfg.init_from_hf or None)
    if jax.process_index() == 0:
        save_config(cfg, cfg.workdir)
    g = cfg.grpo
    exec_cfg = ExecutionConfig(wall_s=g.exec_timeout_s, cpu_s=g.exec_timeout_s)
    with ExecutionPool(num_workers=g.exec_workers, config=exec_cfg) as pool:
        return train_grpo(
            cfg, model_cfg=model_cfg, params=params, mesh_rules=run.mesh_rules, tokenizer=tokenizer,
            executor=pool, echo=echo,
        )  # fmt: skip
