"""A chat client over storm_jax weights, in-process, through the shared continuous-batching sampler.

`LocalClient(params, cfg, tokenizer)` renders the messages with the Qwen3 chat template
(storm_jax.tokenizer.encode_prompt), samples with storm_jax.sampling.sampler.Sampler and decodes the
response (without its end-of-turn token). `complete_batch` runs many conversations in one sampler call.
Request parameters understood: temperature, top_p, top_k, max_tokens (or max_completion_tokens), seed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from storm_jax.clients.base import ClientStats, Completion, Messages, Usage, normalize_messages


class LocalClient:
    """In-process chat client over (params, ModelConfig, tokenizer)."""

    def __init__(self, params, cfg, tokenizer, *, engine=None, max_tokens: int = 512,
                 enable_thinking: bool = False, name: str = "local"):  # fmt: skip
        from storm_jax.sampling.sampler import EngineConfig, Sampler
        from storm_jax.tokenizer import eos_ids

        self.cfg, self.tokenizer, self.name = cfg, tokenizer, name
        self.engine = engine or EngineConfig(num_slots=4, max_len=2048, chunk_size=16, max_bucket=512)
        self.sampler = Sampler(params, cfg, self.engine)
        self.max_tokens, self.enable_thinking = max_tokens, enable_thinking
        self.eos = tuple(eos_ids(tokenizer))
        self.stats = ClientStats()
        self._lock = threading.Lock()  # one sampler: calls from several threads take turns

    @classmethod
    def from_hf_checkpoint(cls, directory: str, **kwargs: Any) -> LocalClient:
        """A client over an HF checkpoint directory (config.json + safetensors + tokenizer files)."""
        from storm_jax.models.hf import load_hf_checkpoint
        from storm_jax.tokenizer import load_tokenizer

        cfg, params = load_hf_checkpoint(directory, "float32")
        return cls(params, cfg, load_tokenizer(directory), name=kwargs.pop("name", str(directory)), **kwargs)

    def _request(self, messages: Messages, params: dict):
        from storm_jax.sampling.sampler import Request, SamplingParams
        from storm_jax.tokenizer import encode_prompt

        prompt = encode_prompt(
            self.tokenizer, normalize_messages(messages), enable_thinking=self.enable_thinking
        )
        budget = int(params.get("max_tokens", params.get("max_completion_tokens", self.max_tokens)))
        budget = min(budget, self.engine.max_len - len(prompt) - 1)
        if budget < 1:
            raise ValueError(
                f"LocalClient: prompt of {len(prompt)} tokens leaves no room in max_len={self.engine.max_len}"
            )
        sp = SamplingParams(
            temperature=float(params.get("temperature", 0.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", 0)),
            max_new_tokens=budget,
            eos_ids=self.eos,
        )
        return Request(prompt, sp, seed=int(params.get("seed", 0)))

    def complete_batch(self, conversations: Sequence[Messages], **params: Any) -> list[Completion]:
        """One completion per conversation, sampled together."""
        from storm_jax.sampling.rollout import make_decode

        decode = make_decode(self.tokenizer)
        reqs = [self._request(m, params) for m in conversations]
        with self._lock:
            groups = self.sampler.run(reqs, decode=decode)
        out = []
        for req, (seq,) in zip(reqs, groups):
            ids = list(seq.tokens)
            if ids and ids[-1] in self.eos:
                ids = ids[:-1]
            out.append(
                Completion(
                    decode(ids), Usage(len(req.prompt), len(seq.tokens)), finish_reason=seq.stop_reason
                )
            )
        self.stats.add(requests=len(out), completions=len(out), prompt_tokens=sum(c.usage.prompt_tokens for c in out),
                       completion_tokens=sum(c.usage.completion_tokens for c in out))  # fmt: skip
        return out

    def complete(self, messages: Messages, **params: Any) -> Completion:
        return self.complete_batch([messages], **params)[0]
