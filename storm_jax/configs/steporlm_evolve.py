"""StepORLM's self-evolving loop (`storm-jax evolve`): policy <-> GenPRM, weighted DPO + GenPRM SFT per round.

The paper (arXiv 2509.22558) publishes the loop (warm-up SFT on solver-verified teacher trajectories; per round
k samples per problem, solver outcomes, GenPRM critiques, weighted DPO, GenPRM SFT on critiques that agree with
the solver; 3 rounds) and 8B models; the sizes and learning rates below marked GUESS are ours.

`:tiny` runs 2 rounds on CPU in minutes: a tiny random Qwen3 policy and a tiny GenPRM, warm-up SFT on the
bundled arith trajectories, the bundled arith problems, the real execution pool.
"""

from __future__ import annotations

from storm_jax.config import base_config
from storm_jax.configs import model_presets
from storm_jax.configs.tiny_cpu import _RES

VARIANTS = {"tiny": "2 rounds on CPU: tiny policy + tiny GenPRM on the bundled arith problems (minutes)"}


def get_config(arg: str | None = None):
    c = base_config()
    c.recipe = "evolve"
    c.workdir = "runs/steporlm_evolve"
    model_presets.apply_preset(c, "qwen3-8b", dtype="bfloat16", param_dtype="float32", remat="full")
    c.init_from_hf = ""  # the base policy (Qwen3-8B in the paper)
    c.data.source = "jsonl"
    c.data.path = ""  # warm-up SFT rows: solver-verified teacher trajectories (storm-jax warmup-data)
    c.data.seq_len = 8192
    c.data.batch_size = 64  # GUESS
    c.data.enable_thinking = False
    c.optim.lr = 1e-5  # GUESS
    c.optim.warmup_steps = 20
    c.train.steps = 1000  # GUESS: about 1 epoch of ~50K trajectories at 64 per step
    c.train.logprob_chunk = 1024
    e = c.evolve
    e.problems_path = ""  # the round problems (benchmark schema)
    e.rounds = 3
    e.samples_per_problem = 4  # GUESS: k
    e.layout = "titled"
    from storm_jax.steporlm.policy_format import SYSTEM_PROMPT

    e.system_prompt = SYSTEM_PROMPT
    e.tools = False  # the titled layout ends in one program, run once by the pool
    e.max_response_tokens = 4096
    e.max_len = 8192
    e.num_slots = 64
    e.critique_tokens = 2048
    e.critique_max_len = 8192
    e.genprm_seq_len = 8192
    e.dpo_seq_len = 8192
    e.dpo_batch_pairs = 32
    if arg == "tiny":
        tiny(c)
    elif arg:
        raise ValueError(f"steporlm_evolve.py: unknown variant {arg!r} (tiny)")
    return c


def tiny(c) -> None:
    """CPU scale: tiny random Qwen3 (real vocabulary) for both models, STORM-layout arith trajectories."""
    model_presets.apply_preset(c, "tiny", dtype="float32", param_dtype="float32", remat="none")
    c.workdir = "runs/steporlm_evolve_tiny"
    c.data.path = str(_RES / "arith" / "train.sft_traj.jsonl")
    c.data.seq_len = 512
    c.data.batch_size = 2
    c.optim.lr = 3e-3  # a random tiny model needs a large lr to learn anything in a few dozen steps
    c.optim.warmup_steps = 5
    c.optim.min_lr_ratio = 0.1
    c.train.steps = 20  # GUESS (was 40; the loss still falls from 12 to ~7: the warm-up does real work)
    c.train.logprob_chunk = 128
    # the vocabulary projection is ~all of this model's cost; a GenPRM row's loss is only its critique
    c.train.skip_masked_chunks = True
    c.train.log_every = 10
    c.train.progress = False
    c.checkpoint.save_every = 1000  # no mid-stage checkpoints: a killed stage restarts from its inputs
    c.checkpoint.async_save = False
    e = c.evolve
    e.problems_path = str(_RES / "arith" / "train.problems.jsonl")
    e.num_problems = 6
    e.rounds = 2
    e.samples_per_problem = 4
    e.layout = "storm"
    e.system_prompt = ""  # the arith trajectories have no system message
    e.tools = True
    e.max_tool_calls = 2
    e.max_response_tokens = 192
    e.max_len = 512
    e.num_slots = 24  # GUESS: every sample (and every critique) of a round decodes in one wave
    e.exec_workers = 2
    # The GenPRM learns the critique syntax: terse critic critiques (a fixed reasoning line, two-word reasons),
    # warm-up rows that include solutions cut before their program and random-token "noise" solutions (what
    # the barely trained policy writes: one step, "no program"), a large lr, greedy critiques.
    e.critique_style = "terse"
    e.genprm_warmup_trajs = 48
    e.genprm_warmup_truncated = True
    e.genprm_warmup_babble = 48  # GUESS
    e.genprm_warmup_steps = 60  # GUESS (60 and 80 steps: 8 and 9 of 24 round-1 critiques parsed)
    e.genprm_sft_steps = 8  # GUESS
    e.genprm_lr = 1e-2  # GUESS: a random tiny model; 3e-3 left the loss at 6.8 after 30 steps
    e.genprm_sft_lr = 5e-4  # GUESS: 8 steps at 2e-3 on a round's rows made it write 2 steps for every 1
    e.genprm_batch_size = 2
    e.genprm_seq_len = 512  # critique rows are ~300-450 tokens (longer ones are dropped, never cut)
    e.critique_tokens = 128  # a terse critique of n steps is ~15 + 9 n tokens: no truncation up to 12 steps
    e.critique_max_len = 768
    e.dpo_steps = 3
    e.dpo_lr = 1e-4
    e.dpo_batch_pairs = 2
    e.dpo_seq_len = 512
    e.dpo_subset = True  # the 6 pairs the 3 steps train on get reference log-probs, not all ~20
    # Equal-outcome pairs are scored by the programmatic critic here: the tiny GenPRM parses only part of its
    # critiques (its parse-failure rate is reported every round), and an unparsed critique gives no pair.
    # Its critiques also bootstrap the GenPRM's SFT data. The full recipe scores pairs with the GenPRM.
    e.pair_scorer = "critic"
