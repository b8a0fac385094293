"""The `evolve` config section (storm-jax evolve, storm_jax.steporlm.evolve) and its validation.

The policy's model, optimizer and data sections are the config's own (c.model, c.optim, c.data: the warm-up
SFT); the stage configs of the loop (GenPRM SFT, weighted DPO) are derived copies with the keys below.
"""

from __future__ import annotations

import ml_collections

LAYOUTS = ("storm", "titled")
PAIR_MODES = ("weighted", "plain", "outcome_only")
PAIR_SCORERS = ("genprm", "critic")


def evolve_defaults() -> ml_collections.ConfigDict:
    """Every key of the `evolve` section, with defaults."""
    e = ml_collections.ConfigDict()
    e.problems_path = ""  # benchmark-schema JSONL; synthetic rows (meta.program) also feed the critic
    e.num_problems = 0  # 0 = all
    e.rounds = 3
    e.samples_per_problem = 4  # k
    e.layout = "storm"  # storm: tool-integrated steps | titled: the nine <step> blocks
    e.system_prompt = ""
    e.temperature = 1.0
    e.top_k = 0
    e.top_p = 1.0
    e.max_response_tokens = 512
    e.max_len = 1024
    e.num_slots = 8
    e.decode_chunk = 16
    e.tools = True
    e.max_tool_calls = 3
    e.exec_workers = 2
    e.exec_timeout_s = 10.0
    e.protocol = "strict"
    # ablations
    e.warmup = True  # False: no warm-up SFT of the policy (starts from init / init_from_hf)
    e.frozen_genprm = False  # True: the GenPRM is never fine-tuned in the rounds
    e.pair_mode = "weighted"  # weighted | plain (w = 1) | outcome_only
    e.pair_scorer = "genprm"  # genprm | critic (the programmatic critic scores the samples instead)
    e.max_pairs_per_problem = 4
    e.min_delta = 0.0
    # GenPRM
    e.genprm_init = ""  # HF dir of the GenPRM ("" = a seeded init of the policy's architecture)
    e.genprm_warmup_steps = 60  # SFT steps on programmatic critiques before round 1 (0 = none)
    e.genprm_warmup_trajs = 48  # warm-up trajectories critiqued (gold, one planted flaw, cut before the code)
    e.genprm_warmup_truncated = True  # also critique each gold solution cut before its program (1 step)
    e.genprm_warmup_babble = 0  # also critique this many seeded random-token texts (a policy writing noise)
    e.genprm_batch_size = 0  # GenPRM SFT rows per step (0 = data.batch_size)
    e.genprm_sft_steps = 20  # per round, on solver-agreeing critiques
    e.genprm_lr = 1e-5
    e.genprm_sft_lr = 0.0  # the rounds' GenPRM SFT lr (0 = genprm_lr, the warm-up's)
    e.genprm_seq_len = 1024
    e.genprm_bootstrap = True  # add the critic's solver-agreeing critiques to each round's GenPRM SFT data
    e.critique_tokens = 256
    e.critique_max_len = 1536
    e.critique_temperature = 0.0  # greedy
    e.critique_style = "full"  # the critic's critiques (GenPRM SFT data): full | terse (two-word reasons)
    # weighted DPO per round
    e.dpo_steps = 20
    e.dpo_lr = 5e-7
    e.dpo_batch_pairs = 4
    e.dpo_seq_len = 1024
    e.dpo_subset = False  # True: train on the dpo_steps * dpo_batch_pairs heaviest pairs only
    e.compile_cache = True  # storm-jax evolve: a persistent XLA cache in <workdir>/jax_cache
    return e


def validate_evolve(cfg: ml_collections.ConfigDict, fail) -> None:
    """Semantic checks of the evolve section; `fail(key, message)` raises."""
    e = cfg.evolve
    if not e.problems_path:
        fail("evolve.problems_path", "is empty (set a benchmark-schema JSONL of problems)")
    from storm_jax.steporlm.critic import STYLES

    for key, choices in (("layout", LAYOUTS), ("pair_mode", PAIR_MODES), ("pair_scorer", PAIR_SCORERS),
                         ("critique_style", STYLES)):  # fmt: skip
        if e[key] not in choices:
            fail(f"evolve.{key}", f"{e[key]!r} not in {choices}")
    for key in ("rounds", "samples_per_problem", "max_response_tokens", "num_slots", "dpo_steps",
                "dpo_batch_pairs", "critique_tokens", "exec_workers"):  # fmt: skip
        if int(e[key]) < 1:
            fail(f"evolve.{key}", f"must be >= 1, got {e[key]}")
    if e.max_len <= e.max_response_tokens:
        fail(
            "evolve.max_len",
            f"{e.max_len} leaves no room for a prompt (max_response_tokens={e.max_response_tokens})",
        )
    if e.critique_max_len <= e.critique_tokens:
        fail("evolve.critique_max_len", f"{e.critique_max_len} <= critique_tokens={e.critique_tokens}")
    if e.samples_per_problem < 2:
        fail("evolve.samples_per_problem", "pairs need at least 2 samples per problem")
