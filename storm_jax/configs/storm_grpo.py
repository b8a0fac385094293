"""STORM stage 2: GRPO of Qwen3-4B-Thinking-2507 with the code interpreter in the loop.

STORM's RL hyper-parameters are not published; the values marked INFERRED come from CoRT (same first authors,
same recipe family; docs/design.md). Values marked GUESS are ours.
Run: storm-jax train grpo --config=storm_grpo --config.init_from_hf=/path/storm_sft_export \
       --config.grpo.problems_path=train_problems.jsonl --config.workdir=gs://.../storm_grpo

`--config=storm_grpo:tiny` is the same recipe on a tiny random Qwen3 and the bundled arith
problems (CPU, minutes).
"""

from __future__ import annotations

from pathlib import Path

from storm_jax.config import base_config
from storm_jax.configs import model_presets

_RES = Path(__file__).resolve().parents[1] / "resources" / "tiny"

#: `--config=storm_grpo:<variant>` choices (the loader refuses others).
VARIANTS = {"tiny": "the same recipe on a tiny random Qwen3 and the bundled arith problems (CPU)"}

SYSTEM_PROMPT = (
    "You are an expert in operations research. Model the problem, write a Python program using pyomo with the "
    "HiGHS solver in a ```python block; it will be run and its output shown in an ```output block. "
    "Finish with the optimal objective value in \\boxed{} (or \\boxed{infeasible})."
)


def get_config(arg: str | None = None):
    c = base_config()
    c.recipe = "grpo"
    c.workdir = "runs/storm_grpo"
    model_presets.apply_preset(
        c, "qwen3-4b-thinking-2507", dtype="bfloat16", param_dtype="float32", remat="full"
    )
    c.init_from_hf = ""  # the STORM SFT checkpoint (storm-jax export of the storm_sft run)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.lr = 1e-6  # INFERRED (CoRT)
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.train.log_every = 1
    c.train.grad_accum = 8  # GUESS: bounds activation memory of 16k-token sequences
    c.checkpoint.save_every = 10
    c.checkpoint.keep = 3
    g = c.grpo
    g.problems_path = ""  # benchmark-schema JSONL of training problems
    g.system_prompt = SYSTEM_PROMPT  # GUESS: STORM's prompt is not public
    g.enable_thinking = True
    g.steps = 200  # GUESS
    g.problems_per_step = 16  # INFERRED: batch 128 trajectories = 16 prompts x group 8
    g.group_size = 8  # INFERRED
    g.ppo_epochs = 1
    g.minibatch_size = 32  # GUESS: 4 updates per step
    g.temperature = 0.6  # INFERRED
    g.top_p = 0.95  # INFERRED
    g.max_response_tokens = 16384  # INFERRED
    g.max_len = 17408
    g.max_tool_calls = 12  # docs/design.md#trajectory-format (training)
    g.kl_beta = 0.001  # INFERRED
    g.protocol = "storm"
    g.epsilon = 1e-4  # GUESS
    g.answer_from = "boxed"
    g.aggregation = "token_mean"
    # DAPO: zero-variance groups carry no gradient, so they are filtered and the step draws more problems
    g.drop_zero_variance = True
    g.dynamic_sampling = True
    g.max_draws_per_step = 64  # GUESS: 4 x problems_per_step, bounds a step's rollout cost
    g.num_slots = 128
    g.decode_chunk = 64
    g.seq_bucket = 1024
    if arg == "tiny":
        tiny(c)
    elif arg:
        raise ValueError(f"storm_grpo.py: unknown variant {arg!r} (tiny)")
    return c


def tiny(c) -> None:
    """The same recipe at CPU scale: tiny random Qwen3, bundled arith problems, short responses."""
    model_presets.apply_preset(c, "tiny", dtype="float32", param_dtype="float32", remat="none")
    c.workdir = "runs/storm_grpo_tiny"
    c.init_from_hf = ""
    c.optim.lr = 1e-4
    c.train.grad_accum = 1
    c.checkpoint.save_every = 5
    g = c.grpo
    g.problems_path = str(_RES / "arith" / "train.problems.jsonl")
    g.system_prompt = ""  # the arith SFT rows have no system message
    g.enable_thinking = False
    g.steps = 6
    g.problems_per_step = 4
    g.group_size = 4
    g.max_draws_per_step = 16
    g.minibatch_size = 0
    g.temperature = 1.0
    g.top_p = 1.0
    g.max_response_tokens = 384  # bundled arith responses: p90 355 tokens (code + output + answer)
    g.max_len = 512
    g.kl_beta = 0.0
    g.num_slots = 16
    g.decode_chunk = 16
    g.seq_bucket = 64
