"""The embedded default: the whole STORM recipe at tiny scale on CPU (`storm-jax pipeline`).

SFT of a tiny random Qwen3 (real Qwen3 vocabulary and chat template) on the bundled arith trajectories,
then GRPO with the real execution pool on the bundled arith problems, then scoring on held-out ones.
Sized to finish in about ten minutes on 2 CPU cores; the model is far too small to solve the problems
reliably — the point is that every stage of the real recipe runs and is measured.
"""

from __future__ import annotations

from storm_jax.configs import storm_grpo, tiny_cpu

_RES = tiny_cpu._RES

#: `--config=storm_tiny:<variant>` choices (the loader refuses others).
VARIANTS = {"smoke": "seconds: a few steps of every stage (plumbing tests)"}


def get_config(arg: str | None = None):
    c = tiny_cpu.get_config()  # the SFT half: tiny Qwen3 on resources/tiny/arith trajectories
    c.recipe = "pipeline"
    c.workdir = "runs/storm_tiny"
    c.data.eval_path = ""  # the pipeline scores held-out problems instead of an eval loss
    c.train.eval_every = 0
    c.train.steps = 150
    # 512 positions hold every bundled trajectory but the longest few (prompt + response: median 269 tokens,
    # p90 401): shorter rows would cut most trajectories before their answer.
    c.data.batch_size = 2
    c.data.seq_len = 512
    c.data.enable_thinking = False  # the arith trajectories have no thinking; GRPO prompts the same way
    c.train.logprob_chunk = 64
    c.train.log_every = 25
    c.checkpoint.save_every = 150
    tiny_grpo = storm_grpo.get_config("tiny")
    c.grpo = tiny_grpo.grpo
    g = c.grpo
    g.lr = 2e-5
    # DAPO dynamic sampling is on (storm_grpo), but this default model never earns a reward yet (held-out pass@1
    # 0), so extra draws would only multiply a step's cost (measured: cap 8 took GRPO from ~230 s to 409 s with
    # 0 of 64 groups kept); the cap is the step's own problems until the default learns
    g.max_draws_per_step = g.problems_per_step
    g.steps = 8
    # Responses (code, its output and the answer) run to 355 tokens at p90: a budget below that truncates most
    # correct trajectories, and a truncated one earns no reward.
    g.max_response_tokens = 384
    g.max_len = 512
    g.eval_path = str(_RES / "arith" / "heldout.problems.jsonl")
    g.eval_problems = 32
    g.eval_samples = 1
    if arg == "smoke":  # seconds, for tests of the plumbing
        c.train.steps = 4
        g.steps = 2
        g.problems_per_step = 2
        g.group_size = 2
        g.max_draws_per_step = 4
        g.max_response_tokens = 32
        g.max_len = 256
        g.eval_problems = 2
    elif arg:
        raise ValueError(f"storm_tiny.py: unknown variant {arg!r} (smoke)")
    return c
