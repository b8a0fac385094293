"""Peak memory and throughput of the SFT train step, dense vs blockwise attention, at a long sequence on CPU.

  python bench/attention_memory.py [--seq 4096] [--batch 1] [--steps 3] [--remat none] [--impls dense,blockwise]

For each `ModelConfig.attention_impl` it builds the real jitted SFT step (storm_jax.train.sft.build_run, as
bench/train_step.py does) for a small Qwen3 (hidden 256, 4 layers, 8 query / 4 KV heads of 32, vocab 1024:
attention is a large share of the FLOPs at 4K, which is the regime the comparison is about), reads
`compiled.memory_analysis()` (temp = activations and scratch; peak est. = args + temp + out - aliased) and
times `--steps` steps after a warm-up step. Full rows (one document per row), every position trained.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SMALL = dict(model_type="qwen3", vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=4,
             num_heads=8, num_kv_heads=4, head_dim=32, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
             tie_word_embeddings=True, max_position_embeddings=32768)  # fmt: skip


def run_impl(impl: str, seq: int, batch: int, steps: int, remat: str, block: int) -> dict:
    """Compile, measure and time the SFT step for one attention implementation."""
    import jax

    from storm_jax.config import base_config, validate
    from storm_jax.train.sft import SyntheticSFTIterator, build_run, initial_params, to_global
    from storm_jax.train.state import init_train_state
    from storm_jax.train.step import batch_sharding

    c = base_config()
    for k, v in {**SMALL, "dtype": "float32", "param_dtype": "float32", "remat": remat,
                 "attention_impl": impl, "attention_block_q": block, "attention_block_kv": block}.items():  # fmt: skip
        c.model[k] = v
    c.data.source, c.data.seq_len, c.data.batch_size = "synthetic", seq, batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.train.logprob_chunk = 0
    validate(c, num_devices=1)
    run = build_run(c, devices=jax.devices()[:1])
    state = jax.jit(lambda p: init_train_state(p, run.optimizer, 0), out_shardings=run.state_sharding)(
        initial_params(c, run)
    )
    it = SyntheticSFTIterator(run.model_cfg.vocab_size, seq, batch, 0)
    sh = batch_sharding(run.mesh_rules)
    batches = []
    for _ in range(steps + 1):
        b = next(it)
        b["segment_ids"][:] = 1
        b["positions"][:] = list(range(seq))
        b["loss_mask"][:] = 1
        batches.append(to_global(b, sh))
    t = time.perf_counter()
    compiled = run.train_step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t
    ma = compiled.memory_analysis()
    mib = 1024**2
    peak = (
        ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
    )
    state, m = compiled(state, batches[0])
    jax.block_until_ready(m)
    times = []
    for b in batches[1:]:
        t = time.perf_counter()
        state, m = compiled(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "attention_impl": impl,
        "temp_MiB": ma.temp_size_in_bytes / mib,
        "peak_est_MiB": peak / mib,
        "compile_s": compile_s,
        "step_s_median": med,
        "step_s_all": times,
        "tokens_per_s": batch * seq / med,
        "loss": float(m["loss"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--block", type=int, default=512, help="attention_block_q = attention_block_kv")
    ap.add_argument("--impls", default="dense,blockwise")
    a = ap.parse_args(argv)
    import jax

    res = {"device": str(jax.devices()[0].device_kind), "seq": a.seq, "batch": a.batch, "remat": a.remat,
           "block": a.block, "model": SMALL, "runs": []}  # fmt: skip
    for impl in a.impls.split(","):
        res["runs"].append(run_impl(impl, a.seq, a.batch, a.steps, a.remat, a.block))
        print(json.dumps(res["runs"][-1]), file=sys.stderr, flush=True)
    if len(res["runs"]) == 2:
        d, b = res["runs"]
        res["temp_ratio"] = b["temp_MiB"] / d["temp_MiB"]
        res["tokens_per_s_ratio"] = b["tokens_per_s"] / d["tokens_per_s"]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
