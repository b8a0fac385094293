"""Peer column for bench/sampler.py: google-tunix's `Sampler` on the same safetensors weights and prompts.

Runs inside a separate virtual environment with tunix installed (tunix 0.1.7 pins safetensors<0.8, which clashes
with the transformers in storm_jax's venv), so it imports nothing from storm_jax:

    python3 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7

bench/sampler.py calls it as `TUNIX_PYTHON bench/peers/tunix_sampler.py WEIGHTS_DIR SPEC.json OUT.json`, where
SPEC.json holds {"config": {...HF config fields...}, "new_tokens": N, "repeats": R, "prompts": {"B": [[ids]]}}.
It writes {"B": {"tok_s": ..., "runs": [...], "first_call_s": ..., "tokens": [[ids]]}} to OUT.json.
Timing is the same as the storm_jax column: one warm-up call (compiles), then the median wall time of R calls,
tok/s = B * N / wall. Greedy; the eos id is one no token can equal, so every row decodes all N tokens.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from anchor import tunix_qwen3_config  # bench/peers/ is sys.path[0] when run as a script


class _IdTokenizer:
    """tunix takes prompt strings: here a string is the prompt's token ids separated by spaces."""

    def __init__(self, pad_id: int):
        self._pad = pad_id

    def encode(self, text, **kw):
        return [int(t) for t in text.split()]

    def decode(self, ids, **kw):
        return " ".join(str(int(t)) for t in ids)

    def bos_id(self):
        return None  # prompts are passed as they are: no BOS added

    def eos_id(self):
        return -1

    def pad_id(self):
        return self._pad


def main(weights_dir: str, spec_path: str, out_path: str) -> int:
    import jax
    import numpy as np
    import tunix
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen3 import params as qwen3_params

    spec = json.load(open(spec_path))
    c = spec["config"]
    cfg = tunix_qwen3_config(c)
    model = qwen3_params.create_model_from_safe_tensors(weights_dir, cfg)
    print(f"tunix {tunix.__version__}, jax {jax.__version__} ({jax.devices()[0].platform})", flush=True)
    new = int(spec["new_tokens"])
    results = {}
    for b, prompts in spec["prompts"].items():
        P = len(prompts[0])
        # The pad id must never occur in a prompt (tunix finds padding by value); the last vocabulary id is unused.
        tok = _IdTokenizer(pad_id=c["vocab_size"] - 1)
        cache = sampler_lib.CacheConfig(
            cache_size=P + new,
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
        )
        sampler = sampler_lib.Sampler(transformer=model, tokenizer=tok, cache_config=cache)
        texts = [" ".join(map(str, p)) for p in prompts]
        kw = dict(max_generation_steps=new, max_prompt_length=P, echo=False, eos_tokens=[-1], temperature=0.0)
        t = time.perf_counter()
        out = sampler(texts, **kw)
        first = time.perf_counter() - t
        runs = []
        for _ in range(int(spec["repeats"])):
            t = time.perf_counter()
            out = sampler(texts, **kw)
            runs.append(time.perf_counter() - t)
        tokens = [np.asarray(x).tolist() for x in out.tokens]
        assert all(len(x) == new for x in tokens), [len(x) for x in tokens]
        wall = statistics.median(runs)
        results[b] = {
            "tok_s": len(prompts) * new / wall,
            "runs": runs,
            "first_call_s": first,
            "tokens": tokens,
        }
        print(f"B={int(b):2d} tunix       : first call {first:.1f}s, median {wall:.2f}s -> {results[b]['tok_s']:.1f} tok/s",
              flush=True)  # fmt: skip
    json.dump(results, open(out_path, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
