"""The schema of a CALM config (`storm-jax calm --config=calm[:tiny]`) and its validation.

Recipe files start from `calm_config()`; `load_calm_config` runs the recipe (storm_jax.config resolves
names and variants the same way as for training), checks its keys against this schema, applies
`--config.a.b=value` overrides and validates; errors are one ConfigError naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from storm_jax.calm.loop import DEFAULT_HINT_TEMPLATE
from storm_jax.clients import client_section
from storm_jax.config import ConfigError, apply_overrides, check_schema, load_config_file
from storm_jax.data.synth.trajectories import SYSTEM_PROMPT

INTERVENER_KINDS = ("programmatic", "openai", "local")


def calm_config() -> ml_collections.ConfigDict:
    """Every key of a CALM config, with defaults (the paper's setting where it is known)."""
    c = ml_collections.ConfigDict()
    c.recipe = "calm"
    c.workdir = "runs/calm"  # golden.jsonl, results.jsonl, stats.json, config.json, cache/
    c.seed = 0
    c.problems_path = ""  # benchmark-schema JSONL (id, question, answer, answer_status, meta.program)
    c.num_problems = 0  # 0 = all
    c.batch_size = 8  # problems rolled out together
    c.max_interventions = 5  # hints per trajectory (CALM: at most 5)
    c.protocol = "storm"  # answer check of the golden filter (storm_jax.rewards)
    c.system_prompt = SYSTEM_PROMPT
    c.enable_thinking = True  # the paper's reasoner is a thinking model
    c.hint_template = DEFAULT_HINT_TEMPLATE
    c.progress = True

    r = c.reasoner = ml_collections.ConfigDict()
    r.checkpoint = ""  # HF checkpoint directory of the reasoner
    r.random_preset = ""  # instead: a random model of this preset (storm_jax.configs.model_presets), tests
    r.temperature = 0.6
    r.top_p = 0.95
    r.top_k = 0
    r.max_response_tokens = 8192  # model + tool-output + hint ids of one trajectory
    r.max_len = 10240  # sampler cache positions per slot (prompt + response)
    r.num_slots = 8
    r.decode_chunk = 32
    r.max_tool_calls = 12
    r.max_output_chars = 2000
    r.exec_timeout_s = 10.0
    r.exec_workers = 2

    c.intervener = client_section()
    c.intervener.kind = "programmatic"  # programmatic (synthetic problems, offline) | openai | local
    c.intervener.max_tokens = 4096
    return c


def validate_calm(c: ml_collections.ConfigDict, source: str = "config") -> None:
    """Semantic checks; ConfigError naming the key."""

    def fail(key: str, msg: str):
        raise ConfigError(f"{source}: {key}: {msg}")

    if c.recipe != "calm":
        fail("recipe", f"{c.recipe!r}: a CALM config has recipe 'calm'")
    if not c.problems_path:
        fail("problems_path", "is empty (set a benchmark-schema JSONL of problems)")
    if c.intervener.kind not in INTERVENER_KINDS:
        fail("intervener.kind", f"{c.intervener.kind!r} not in {INTERVENER_KINDS}")
    if bool(c.reasoner.checkpoint) == bool(c.reasoner.random_preset):
        fail("reasoner.checkpoint", "set exactly one of reasoner.checkpoint and reasoner.random_preset")
    for key in ("batch_size", "reasoner.max_response_tokens", "reasoner.num_slots", "reasoner.decode_chunk",
                "reasoner.exec_workers"):  # fmt: skip
        node, name = (c, key) if "." not in key else (c[key.split(".")[0]], key.split(".")[1])
        if int(node[name]) < 1:
            fail(key, f"must be >= 1, got {node[name]}")
    if not 0 <= c.max_interventions <= 20:
        fail("max_interventions", f"must be in [0, 20], got {c.max_interventions}")
    if c.reasoner.max_response_tokens >= c.reasoner.max_len:
        fail("reasoner.max_len", f"{c.reasoner.max_len} must exceed reasoner.max_response_tokens")
    if "{hint}" not in c.hint_template:
        fail("hint_template", "must contain {hint}")


def load_calm_config(spec: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a CALM recipe (default: `calm`), check it against `calm_config()`, override, validate, lock."""
    spec = spec or "calm"
    cfg = load_config_file(spec)
    check_schema(cfg, calm_config(), source=str(spec))
    apply_overrides(cfg, overrides)
    validate_calm(cfg, source=str(spec))
    cfg.lock()
    return cfg
