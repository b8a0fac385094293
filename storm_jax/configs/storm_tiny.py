"""The embedded default: the whole STORM recipe at tiny scale on CPU (`storm-jax pipeline`).

SFT of a tiny random Qwen3 (Qwen3's tokenizer and chat template) on the bundled `cart` gold trajectories, then
GRPO with the real execution pool on the bundled `cart` training problems, then greedy scoring on the held-out
ones (never trained on). `cart` (storm_jax/data/synth/families_demo.py) gives each stage something a tiny model
can learn: SFT teaches the program and copying the question's numbers into it; the teacher declares the count
continuous where that is safe (the capacity a multiple of the weight), so the SFT model relaxes integrality
where it is not, and only GRPO's outcome reward teaches it to keep it.

Sizes, not code paths, differ from full scale. The one size that needs a word is the vocabulary: the bundled
tokenizer is Qwen3's trimmed to the tokens of the training files (storm_jax/tokenizer_trim.py; every byte and
every chat-template token kept). Over the full 151,936 rows the vocabulary projection is ~98 % of this
model's training step, and the copy circuit did not form within ten minutes of CPU (docs/design.md).
"""

from __future__ import annotations

from storm_jax.configs import storm_grpo, tiny_cpu

_RES = tiny_cpu._RES

#: `--config=storm_tiny:<variant>` choices (the loader refuses others).
VARIANTS = {"smoke": "seconds: a few steps of every stage (plumbing tests)"}


def get_config(arg: str | None = None):
    c = tiny_cpu.get_config()  # the SFT half: a tiny Qwen3, packed rows, Adam
    c.recipe = "pipeline"
    c.workdir = "runs/storm_tiny"
    data = _RES / "cart"
    c.data.path = str(data / "train.sft_traj.jsonl")
    c.data.tokenizer_path = str(data / "tokenizer")
    c.model.vocab_size = 640  # the trimmed tokenizer's 514 ids, padded to a multiple of 128
    # Qwen3's own head_dim (128) rather than the tiny preset's 16: with QK-norm an attention logit is bounded by
    # sqrt(head_dim), and the copy heads formed sooner at 128 (measured: held-out copies exact at ~800 steps
    # against ~1300 at 16)
    c.model.head_dim = 128
    c.data.eval_path = ""  # the pipeline scores held-out problems instead of an eval loss
    c.train.eval_every = 0
    c.optim.lr = 3e-3
    c.train.steps = 800
    # cart trajectories are ~180 tokens (prompt + response): a 512-token row packs about three
    c.data.batch_size = 2
    c.data.seq_len = 512
    c.data.enable_thinking = False  # the cart trajectories have no thinking; GRPO prompts the same way
    c.train.logprob_chunk = 0  # a 640-row head is small: no chunking needed
    c.train.log_every = 50
    c.checkpoint.save_every = 200
    tiny_grpo = storm_grpo.get_config("tiny")
    c.grpo = tiny_grpo.grpo
    g = c.grpo
    g.lr = 1e-3
    g.problems_path = str(data / "train.problems.jsonl")
    # the full recipe's sampling (storm_grpo): at temperature 1.0 the tiny policy's digit copies break often
    # enough that the sampled reward fell while the greedy one rose (measured: 0.67 -> 0.60 over 8 steps)
    g.temperature = 0.6
    g.top_p = 0.95
    g.steps = 12
    g.problems_per_step = 8
    g.group_size = 4
    g.num_slots = 32  # a step's 8 x 4 rollouts decode together
    g.max_draws_per_step = 24
    # cart responses (code, its output and the answer) are ~135 tokens
    g.max_response_tokens = 192
    g.max_len = 256
    g.eval_path = str(data / "heldout.problems.jsonl")
    g.eval_problems = 90  # every held-out problem
    g.eval_samples = 1
    if arg == "smoke":  # seconds, for tests of the plumbing
        c.model.head_dim = 16
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
