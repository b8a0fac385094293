"""Decode throughput: storm_jax sampler vs transformers `generate` (torch CPU), same weights.

Model: the ~100M Qwen3 anchor config (vocab 151,936 tied, hidden 512, 8 layers, 8/4 heads, head_dim 64, mlp 1536;
bench/peers/anchor.py). Shapes: 64-token random prompts, 256 new tokens, greedy, no early stop; batch 1, 8, 32.
tok/s = batch * 256 / wall of the whole call (prefill included), median of --repeats timed runs after one warm-up
run (which compiles); the timed runs of transformers and storm_jax alternate, and the ratio of each pair is printed too.

    .venv/bin/python bench/sampler.py [--batches 1,8,32] [--repeats 3] [--chunk 64] [--tunix-python PY]

With --tunix-python (or STORM_TUNIX_PYTHON) naming the interpreter of a venv with google-tunix installed, a third
column runs tunix's `Sampler` on the same safetensors weights and prompts (bench/peers/tunix_sampler.py, in a
subprocess, before the other two so they do not share the CPU):

    python3 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from peers.anchor import ANCHOR, hf_qwen3_config  # bench/ is sys.path[0] when run as a script

PROMPT, NEW = 64, 256


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--tunix-python", default=os.environ.get("STORM_TUNIX_PYTHON"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import jax
    import torch
    import transformers
    from transformers import Qwen3ForCausalLM

    from storm_jax.models.hf import load_hf_checkpoint
    from storm_jax.sampling.sampler import EngineConfig, Request, Sampler, SamplingParams

    torch.manual_seed(0)
    hcfg = hf_qwen3_config()
    model = Qwen3ForCausalLM(hcfg).eval()
    prompts = {
        B: torch.randint(0, 151643, (B, PROMPT), generator=torch.Generator().manual_seed(B)) for B in batches
    }
    tunix = {}
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        cfg, params = load_hf_checkpoint(d)
        if args.tunix_python:
            tunix = run_tunix(args.tunix_python, d, prompts, args.repeats)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, transformers {transformers.__version__}, params {sum(x.size for x in jax.tree.leaves(params)):,}, "
        f"cpus {os.cpu_count()}",
        flush=True,
    )

    rows = []
    for B in batches:
        ids = prompts[B]
        attn = torch.ones_like(ids)
        kw = dict(
            do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, attention_mask=attn, pad_token_id=151643
        )

        def hf(ids=ids, kw=kw):
            with torch.no_grad():
                return model.generate(ids, **kw)

        engine = EngineConfig(num_slots=B, max_len=PROMPT + NEW + 1, chunk_size=args.chunk, max_bucket=64)
        sampler = Sampler(params, cfg, engine)
        sp = SamplingParams(temperature=0.0, max_new_tokens=NEW)  # no eos: always the full 256 tokens
        reqs = [Request(r.tolist(), sp) for r in ids]

        def ours(sampler=sampler, reqs=reqs):
            return sampler.run(reqs)

        # One untimed call each (compiles), then timed calls alternating between the two, so that a slow spell
        # of the (shared) machine lands on both columns instead of on one of them.
        fns = {"transformers": hf, "storm_jax": ours}
        outs, firsts, ts = {}, {}, {name: [] for name in fns}
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = fn()
            firsts[name] = time.perf_counter() - t
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                ts[name].append(time.perf_counter() - t)
        timings = {name: statistics.median(v) for name, v in ts.items()}
        for name in fns:
            print(
                f"B={B:2d} {name:12s}: first call {firsts[name]:.1f}s, median {timings[name]:.2f}s "
                f"{[round(x, 2) for x in ts[name]]} -> {B * NEW / timings[name]:.1f} tok/s",
                flush=True,
            )
        pair = [h / o for h, o in zip(ts["transformers"], ts["storm_jax"])]
        print(f"B={B:2d} ratio of each alternating pair: {[round(x, 2) for x in pair]}", flush=True)
        hf_tok = outs["transformers"][:, PROMPT:].numpy()
        our_tok = np.array([g[0].tokens for g in outs["storm_jax"]])
        agree = float((hf_tok == our_tok).all(axis=1).mean())
        first_diff = [int(np.argmax(a != b)) if (a != b).any() else NEW for a, b in zip(hf_tok, our_tok)]
        tx = tunix.get(str(B))
        tx_agree = float((np.array(tx["tokens"]) == our_tok).all(axis=1).mean()) if tx else None
        rows.append(
            (B, B * NEW / timings["transformers"], B * NEW / timings["storm_jax"], agree, min(first_diff),
             tx["tok_s"] if tx else None, tx_agree)
        )  # fmt: skip

    print(
        "\n| batch | transformers tok/s | tunix tok/s | storm_jax tok/s | vs transformers | vs tunix "
        "| rows identical to transformers (greedy) | first divergence | rows identical to tunix |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for B, h, o, agree, fd, t, t_agree in rows:
        tcol = f"{t:.1f}" if t else "-"
        tratio = f"{o / t:.2f}x" if t else "-"
        tag = f"{t_agree:.0%}" if t_agree is not None else "-"
        print(f"| {B} | {h:.1f} | {tcol} | {o:.1f} | {o / h:.2f}x | {tratio} | {agree:.0%} | {fd} | {tag} |")
    return 0


def run_tunix(python: str, weights_dir: str, prompts: dict, repeats: int) -> dict:
    """Run bench/peers/tunix_sampler.py under `python` (tunix's venv) on the saved weights; {str(B): result}."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = {
        "config": {**ANCHOR},
        "new_tokens": NEW,
        "repeats": repeats,
        "prompts": {str(B): ids.tolist() for B, ids in prompts.items()},
    }
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        json.dump(spec, open(spec_path, "w"))
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        cmd = [python, os.path.join(here, "peers", "tunix_sampler.py"), weights_dir, spec_path, out_path]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            print(f"tunix column skipped: {' '.join(cmd)} exited with {proc.returncode}", flush=True)
            return {}
        return json.load(open(out_path))


if __name__ == "__main__":
    sys.exit(main())
