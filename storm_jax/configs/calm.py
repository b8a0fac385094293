"""CALM data curation (`storm-jax calm`): reasoner + intervener hints -> golden SFT rows.

The default is the paper's shape at our scale: a thinking reasoner from `reasoner.checkpoint`, an
OpenAI-compatible expert intervener (set intervener.base_url / model / api_key_env), synthetic problems.
`:tiny` runs offline on CPU in about a minute: a tiny random reasoner, the programmatic intervener, a few
bundled arith problems (the random model solves none: the point is that every stage runs).
"""

from __future__ import annotations

from pathlib import Path

from storm_jax.calm.config import calm_config

_RES = Path(__file__).resolve().parents[1] / "resources" / "tiny"

#: `--config=calm:<variant>` choices.
VARIANTS = {"tiny": "CPU, offline: tiny random reasoner, programmatic intervener, 4 bundled problems"}


def get_config(arg: str | None = None):
    c = calm_config()
    c.problems_path = str(_RES / "mixed" / "train.problems.jsonl")
    c.reasoner.checkpoint = ""  # required: --config.reasoner.checkpoint=<HF dir of Qwen3-4B-Thinking-2507>
    c.intervener.kind = "openai"
    c.intervener.model = "gemini-2.5-pro"
    c.intervener.base_url = "https://generativelanguage.googleapis.com/v1beta/openai/"
    c.intervener.api_key_env = "GEMINI_API_KEY"
    if arg == "tiny":
        c.workdir = "runs/calm_tiny"
        c.problems_path = str(_RES / "arith" / "train.problems.jsonl")
        c.num_problems = 4
        c.batch_size = 4
        c.max_interventions = 2
        c.enable_thinking = False
        c.reasoner.random_preset = "tiny"
        c.reasoner.temperature = 1.0
        c.reasoner.max_response_tokens = 96
        c.reasoner.max_len = 512
        c.reasoner.num_slots = 4
        c.reasoner.decode_chunk = 16
        c.intervener.kind = "programmatic"
        c.intervener.base_url = c.intervener.model = ""
        c.intervener.api_key_env = "OPENAI_API_KEY"
    elif arg:
        raise ValueError(f"calm.py: unknown variant {arg!r} (tiny)")
    return c
