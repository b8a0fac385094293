"""One GRPO step, broken down: rollout decode, prefill, waiting for tool execution, log-probs and the update.

Two sizes of the same recipe (`storm_tiny`: the embedded default's GRPO section, its execution pool and its
problems): the tiny model of the default, and the ~100M anchor Qwen3 (`--model 100m`, the `qwen3-100m` preset,
random init). `--steps` GRPO steps run through `train_grpo` (the first includes compilation); every step's
breakdown comes from the metrics the trainer writes (`time_decode_s`, `time_prefill_s`, `time_tool_wait_s`,
`time_rollout_s`, `time_logprobs_s`, `time_train_s`).

Then the rollout against the plain sampler: the step's problems are rolled out once more with the code
interpreter (`rollout`), and the same prompts are decoded by the plain `Sampler` without tools and without
stops, each to exactly its rollout's response length, with the same sampling parameters and engine config.
A third rollout gets every program's result back at once (replayed from the first run), which separates the
tool scheduling (pause, output prefill, resume) from the programs' own CPU. Printed: response tokens per
second of all three and the ratios (the goal in issue 20: rollout / plain >= 0.8).

    .venv/bin/python bench/grpo_step.py [--model tiny|100m] [--steps 2] [--repeats 2]

An untrained policy rarely closes a code block, so by default each sample is teacher-forced through the
problem's gold program (`--forced-code`, on by default; the plain sampler is forced through the same ids): each
sample executes it, reads the output and continues; `--no-forced-code` measures the untrained policy as it is.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

BREAKDOWN = (
    "time_decode_s",
    "time_prefill_s",
    "time_tool_wait_s",
    "time_rollout_s",
    "time_logprobs_s",
    "time_train_s",
)


def _config(model: str, workdir: str, steps: int):
    from storm_jax.config import load_config
    from storm_jax.configs import model_presets

    cfg = load_config("storm_tiny", [], num_devices=1)
    cfg.unlock()
    cfg.workdir = workdir
    if model == "100m":
        model_presets.apply_preset(cfg, "qwen3-100m", dtype="float32", param_dtype="float32", remat="none")
        cfg.data.tokenizer_path = ""  # the full Qwen3 vocabulary (the preset's 151,936 rows)
    elif model != "tiny":
        raise SystemExit(f"--model must be tiny or 100m, got {model!r}")
    cfg.grpo.steps = steps
    # An untrained policy's groups all score 0; the recipe drops zero-variance groups and skips an update with
    # no row left. The bench keeps them, so that every step's breakdown holds the log-probs and the update (their
    # cost does not depend on the advantages' values).
    cfg.grpo.drop_zero_variance = False
    cfg.checkpoint.save_every = 10**6  # the final step still saves (the loop forces it)
    return cfg


class _Replay:
    """An executor that runs each distinct program once in `pool`, then hands back its stored result at once: a
    rollout through it costs the tool scheduling (pause, output prefill, resume) but not the programs' CPU."""

    def __init__(self, pool):
        self.pool, self.results = pool, {}

    def submit(self, code: str, *, timeout_s: float | None = None) -> cf.Future:
        if code not in self.results:
            self.results[code] = self.pool.submit(code, timeout_s=timeout_s).result()
        fut: cf.Future = cf.Future()
        fut.set_result(self.results[code])
        return fut


def _rollout_vs_plain(cfg, tokenizer, pool, repeats: int, forced_code: bool, params=None) -> dict:
    """Tokens/s of the tool rollout and of the plain sampler on the same prompts and lengths."""
    import jax

    from storm_jax.sampling.rollout import RolloutRequest, rollout
    from storm_jax.sampling.sampler import Request, Sampler
    from storm_jax.tokenizer import encode_prompt, eos_ids
    from storm_jax.train.grpo import engine_config, load_problems, rollout_config
    from storm_jax.train.setup import build_setup, initial_params

    g = cfg.grpo
    setup = build_setup(cfg)
    params = initial_params(cfg, setup, params)
    model_cfg = setup.model_cfg
    problems = load_problems(g.problems_path, g.system_prompt)[: g.problems_per_step]
    rcfg = rollout_config(g, eos_ids(tokenizer))
    prompts = [
        encode_prompt(tokenizer, list(p.messages), enable_thinking=g.enable_thinking) for p in problems
    ]
    prefixes = [None] * len(prompts)
    if forced_code:
        from storm_jax.data.format import Segment
        from storm_jax.tokenizer import encode_segment

        programs = _gold_programs(g.problems_path)[: len(problems)]
        prefixes = [
            encode_segment(tokenizer, Segment("code", f"```python\n{c}\n```")) if c else None
            for c in programs
        ]
    # forced ids are decoded as the model's own (teacher forcing): the closed block triggers the interpreter
    reqs = [
        RolloutRequest(ids, n=g.group_size, seed=k, forced=pre)
        for k, (ids, pre) in enumerate(zip(prompts, prefixes))
    ]
    sampler = Sampler(params, model_cfg, engine_config(g))
    replay = _Replay(pool)
    # warm-up, once each way: the order in which results come back decides the prefill and window shapes met
    rollout(params, model_cfg, tokenizer, reqs, rcfg, replay, sampler=sampler)
    rollout(params, model_cfg, tokenizer, reqs, rcfg, pool, sampler=sampler)
    plain = Sampler(params, model_cfg, engine_config(g))
    t_roll, t_replay, t_plain = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        rollout(params, model_cfg, tokenizer, reqs, rcfg, replay, sampler=sampler)
        t_replay.append(time.perf_counter() - t)
        s0 = dict(sampler.stats)
        t = time.perf_counter()
        trajs = rollout(params, model_cfg, tokenizer, reqs, rcfg, pool, sampler=sampler)
        t_roll.append(time.perf_counter() - t)
        wait = sampler.stats["tool_wait_s"] - s0["tool_wait_s"]
        # the same prompts (prefix included) decoded to each trajectory's response length with the rollout's
        # sampling (temperature, top-k, top-p, min-p: the truncation is part of a decode step's cost), no tools,
        # no stops
        preqs = []
        for tr in trajs:
            sp = dataclasses.replace(
                rcfg.sampling,
                max_new_tokens=len(tr.response_ids),
                eos_ids=(),
                stop_token_seqs=(),
                stop_strings=(),
            )
            preqs.append(Request(tr.prompt_ids, sp, seed=tr.sample_index, forced=reqs[tr.group].forced))
        if not t_plain:
            plain.run(preqs)  # compiles
        t = time.perf_counter()
        jax.block_until_ready(plain.run(preqs)[-1][-1].tokens)
        t_plain.append(time.perf_counter() - t)
    n_tok = sum(len(tr.response_ids) for tr in trajs)
    calls = sum(tr.num_tool_calls for tr in trajs)
    return {
        "trajectories": len(trajs),
        "response_tokens": n_tok,
        "tool_calls": calls,
        "rollout_s": statistics.median(t_roll),
        "replay_s": statistics.median(t_replay),
        "plain_s": statistics.median(t_plain),
        "last_tool_wait_s": wait,
    }


def _gold_programs(path: str) -> list[str]:
    """The reference program of each problem (`meta.program` of the synthetic problem files), in file order."""
    with open(path) as f:
        return [(json.loads(line).get("meta") or {}).get("program", "") for line in f if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=("tiny", "100m"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--forced-code", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--sft-steps",
        type=int,
        default=0,
        help="first train the policy with the config's SFT for this many steps (tiny: 800 = the pipeline's), so "
        "that GRPO's rollouts write and run code as a trained policy's do",
    )
    args = ap.parse_args()

    import jax

    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
    from storm_jax.tokenizer import config_tokenizer
    from storm_jax.train.grpo import train_grpo

    with tempfile.TemporaryDirectory() as wd:
        cfg = _config(args.model, wd, args.steps)
        tokenizer = config_tokenizer(cfg, cfg.model.vocab_size)
        g = cfg.grpo
        print(
            f"jax {jax.__version__}, cpus {os.cpu_count()}, model {args.model}: hidden {cfg.model.hidden_size}, "
            f"layers {cfg.model.num_layers}; {g.problems_per_step} problems x {g.group_size} samples, "
            f"max_response {g.max_response_tokens}, exec workers {g.exec_workers}",
            flush=True,
        )
        exec_cfg = ExecutionConfig(wall_s=g.exec_timeout_s, cpu_s=g.exec_timeout_s)
        params = None
        if args.sft_steps:
            import copy

            from storm_jax.train.sft import train_sft

            c = copy.deepcopy(cfg)
            c.workdir, c.recipe, c.train.steps = os.path.join(wd, "sft"), "sft", args.sft_steps
            t = time.perf_counter()
            params = train_sft(c, echo=lambda s: None)["state"].params
            print(f"SFT: {args.sft_steps} steps in {time.perf_counter() - t:.1f} s", flush=True)
        cfg.workdir = os.path.join(wd, "grpo")
        with ExecutionPool(num_workers=g.exec_workers, config=exec_cfg) as pool:
            t = time.perf_counter()
            train_grpo(cfg, tokenizer=tokenizer, executor=pool, params=params, echo=lambda s: None)
            wall = time.perf_counter() - t
            rows = [json.loads(x) for x in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
            rows = [r for r in rows if "time_rollout_s" in r]
            print(f"GRPO: {len(rows)} steps in {wall:.1f} s (the first compiles)")
            # groups drawn: dynamic sampling draws more problems while groups have one reward (an untrained
            # policy's all score 0), so a step can roll out more than problems_per_step groups
            print("step  " + "  ".join(f"{k[5:-2]:>9s}" for k in BREAKDOWN) + "  tok/s(decode)  groups drawn")
            for r in rows:
                print(
                    f"{int(r.get('step', 0)):4d}  "
                    + "  ".join(f"{r.get(k, float('nan')):9.2f}" for k in BREAKDOWN)
                    + f"  {r.get('rollout_tokens_per_s', float('nan')):13.1f}"
                    + f"  {int(r.get('groups_drawn', 0)):12d}"
                )
            cmp = _rollout_vs_plain(cfg, tokenizer, pool, args.repeats, args.forced_code, params)
    n = cmp["response_tokens"]
    tps_r, tps_p = n / cmp["rollout_s"], n / cmp["plain_s"]
    print(
        f"rollout with tools: {cmp['trajectories']} trajectories, {cmp['response_tokens']} response tokens, "
        f"{cmp['tool_calls']} tool calls: {cmp['rollout_s']:.2f} s -> {tps_r:.1f} tok/s "
        f"(waiting on tools {cmp['last_tool_wait_s']:.2f} s)"
    )
    print(
        f"rollout with each program's result replayed at once (scheduling without the programs' CPU): "
        f"{cmp['replay_s']:.2f} s -> {n / cmp['replay_s']:.1f} tok/s"
    )
    print(f"plain sampler, same prompts, lengths and sampling: {cmp['plain_s']:.2f} s -> {tps_p:.1f} tok/s")
    print(
        f"ratio rollout/plain: {tps_r / tps_p:.2f}x (goal >= 0.8); replayed/plain: {cmp['plain_s'] / cmp['replay_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
