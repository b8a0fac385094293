"""Decoding presets of `storm-jax eval` and the scoring protocol of each benchmark suite.

Every value says where it comes from; what no source gives is marked GUESS, what we derived from a nearby
source INFERRED (docs/design.md, "What the papers give").
"""

from __future__ import annotations

import dataclasses

from storm_jax.data import benchmarks as bm


@dataclasses.dataclass(frozen=True)
class Preset:
    """How an evaluation samples: decoding and the tool-use budget."""

    name: str
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_new_tokens: int  # response budget: model-written plus tool-output tokens
    max_tool_calls: int
    source: str

    def decoding(self) -> dict:
        """The values that decide what is sampled (recorded in the run's settings)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d.pop("name")
        return d


PRESETS: dict[str, Preset] = {
    "storm": Preset(
        "storm",
        temperature=0.6,
        top_p=0.95,
        top_k=0,
        min_p=0.0,
        max_new_tokens=16384,
        max_tool_calls=15,
        source="INFERRED: T 0.6, top-p 0.95 and a 16k response as in the STORM RL recipe (itself inferred from "
        "the team's earlier recipe); 15 tool calls per trajectory in evaluation (docs/design.md)",
    ),
    "steporlm": Preset(
        "steporlm",
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        min_p=0.0,
        max_new_tokens=8192,
        max_tool_calls=15,
        source="GUESS: the sampling Qwen3 recommends for thinking mode (T 0.6, top-p 0.95, top-k 20, min-p 0) "
        "for StepORLM's Qwen3-8B policy; the paper's evaluation decoding and budget are not known here",
    ),
    "greedy": Preset(
        "greedy",
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        max_new_tokens=16384,
        max_tool_calls=15,
        source="deterministic argmax decoding; budget and tool calls as the storm preset (INFERRED)",
    ),
}

#: suite -> (scoring protocol of storm_jax.rewards, where it comes from)
SUITE_PROTOCOLS: dict[str, tuple[str, str]] = {
    "storm": ("storm", "the STORM reward rule (relative 1e-4: GUESS, the paper does not publish it)"),
    "storm_fixed": ("storm", "the STORM reward rule, on the SIRL-fixed sets (relative 1e-4: GUESS)"),
    "steporlm": ("strict", "GUESS: StepORLM's tolerance is not known here; SIRL's strict rule"),
}
DEFAULT_PROTOCOL = ("strict", "no suite named: SIRL's strict rule |a - t| / (|t| + 1) <= 1e-6")


def suite_protocol(names: str) -> tuple[str, str]:
    """(protocol, source) for a suite, or for a list of datasets that all belong to one paper suite."""
    name = names.strip()
    if name in SUITE_PROTOCOLS:
        return SUITE_PROTOCOLS[name]
    datasets = set(bm.resolve(names))
    owners = [s for s in SUITE_PROTOCOLS if datasets <= set(bm.SUITES[s])]
    protocols = {SUITE_PROTOCOLS[s][0] for s in owners}
    if len(protocols) == 1:
        s = owners[0]
        return SUITE_PROTOCOLS[s][0], f"datasets of the {s} suite: " + SUITE_PROTOCOLS[s][1]
    return DEFAULT_PROTOCOL


__all__ = ["DEFAULT_PROTOCOL", "PRESETS", "SUITE_PROTOCOLS", "Preset", "suite_protocol"]
