"""Generation for StepORLM: checkpoints as HF directories, critique generation with the shared sampler.

The GenPRM is a second checkpoint with its own `Sampler` (own params layout and KV cache), so policy sampling
and critique generation never share or evict each other's cache. Critiques are generated with the same
continuous-batching scheduler as policy samples, with tools off.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from typing import Any

from storm_jax.steporlm.genprm import Critique, build_critique_messages, parse_critique
from storm_jax.steporlm.policy_format import Step


def save_model(cfg: Any, params: Any, out: str, tokenizer: Any = None) -> None:
    """Write params as an HF checkpoint directory, atomically (a temp directory renamed into place), in
    float32 so reloading gives the exact arrays (a resumed loop must continue bit-identically)."""
    from storm_jax.models.hf import save_hf_checkpoint

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf_checkpoint(cfg, params, tmp, dtype="float32", tokenizer=tokenizer)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def load_model(path: str, what: str = "--genprm") -> tuple[Any, Any]:
    """(ModelConfig, params) of an HF checkpoint directory; a bad directory is one UsageError line."""
    from storm_jax.cli_util import UsageError, check_hf_dir
    from storm_jax.models.hf import CheckpointError, load_hf_checkpoint

    check_hf_dir(path, what)
    try:
        return load_hf_checkpoint(path, "float32")
    except CheckpointError as e:
        raise UsageError(f"{what}: {e}") from None


@dataclasses.dataclass
class GeneratedCritique:
    """A generated critique, its parse, and token counts."""

    text: str
    critique: Critique
    prompt_tokens: int
    new_tokens: int


class CritiqueGenerator:
    """Generates GenPRM critiques from a checkpoint's params with its own continuous-batching sampler."""

    def __init__(
        self,
        model_cfg: Any,
        params: Any,
        tokenizer: Any,
        *,
        num_slots: int = 8,
        max_len: int = 1024,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        chunk_size: int = 16,
        seed: int = 0,
    ):
        from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
        from storm_jax.tokenizer import eos_ids

        self.cfg, self.params, self.tok, self.seed = model_cfg, params, tokenizer, seed
        self.max_len, self.max_new_tokens = max_len, max_new_tokens
        self.sampling = SamplingParams(
            temperature=temperature, max_new_tokens=max_new_tokens, eos_ids=tuple(eos_ids(tokenizer))
        )
        engine = EngineConfig(num_slots=num_slots, max_len=max_len, chunk_size=chunk_size)
        self.sampler = Sampler(params, model_cfg, engine)

    def prompt_ids(self, problem: str, steps: Sequence[Step | str]) -> list[int]:
        """Token ids of the critique prompt (generation prompt included, thinking off)."""
        from storm_jax.tokenizer import encode_prompt

        return encode_prompt(self.tok, build_critique_messages(problem, steps), enable_thinking=False)

    def generate(self, items: Sequence[tuple[str, Sequence[Step | str]]]) -> list[GeneratedCritique]:
        """Critiques of (problem, steps) items, in order. A prompt that leaves no room for max_new_tokens in
        the context is not generated: its critique is a counted failure saying so. Item i is seeded with
        seed + i, so a critique depends only on its item and seed."""
        from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, rollout

        prompts = [self.prompt_ids(p, s) for p, s in items]
        budget = self.max_len - self.max_new_tokens - 1
        todo = [i for i, p in enumerate(prompts) if len(p) <= budget and items[i][1]]
        reqs = [RolloutRequest(prompts[i], n=1, seed=self.seed + i) for i in todo]
        rc = RolloutConfig(sampling=self.sampling, tools=False)
        trajs = rollout(self.params, self.cfg, self.tok, reqs, rc, None, sampler=self.sampler) if reqs else []
        out: list[GeneratedCritique | None] = [None] * len(items)
        for i, t in zip(todo, trajs):
            text = t.text.split("<|im_end|>")[0]
            out[i] = GeneratedCritique(
                text, parse_critique(text, len(items[i][1])), len(prompts[i]), sum(t.loss_mask)
            )
        for i, p in enumerate(prompts):
            if out[i] is None:
                n = len(items[i][1])
                why = (
                    "the solution has no steps"
                    if not n
                    else f"prompt of {len(p)} tokens leaves no room in max_len {self.max_len}"
                )
                out[i] = GeneratedCritique("", Critique(n, failure=why), len(p), 0)
        return out  # type: ignore[return-value]
