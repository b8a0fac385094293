"""Training throughput of the JAX SFT step vs a PyTorch AdamW step on the ~100M anchor Qwen3.

  python bench/train_step.py [--steps 3] [--seq 512] [--batch 4] [--chunk 0] [--unfused] [--no-torch] [--remat none]

Prints: the measured fp32 matmul peak of this host (same run), JAX tokens/s + MFU against it, torch tokens/s
(transformers Qwen3ForCausalLM, torch.optim.AdamW, same shapes; as /work/shared/anchors/b4a_torch_train.py)
and the JAX/torch ratio. The model is storm_jax/configs/model_presets.py "qwen3-100m" (= anchors/common_cfg.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def jax_bench(seq: int, batch: int, steps: int, remat: str, chunk: int, fused: bool = True) -> dict:
    import jax

    from storm_jax.config import base_config, validate
    from storm_jax.configs import model_presets
    from storm_jax.train.metrics import count_params, measure_cpu_peak_flops, train_flops_per_token
    from storm_jax.train.sft import SyntheticSFTIterator, build_run, initial_params, to_global
    from storm_jax.train.state import init_train_state
    from storm_jax.train.step import batch_sharding

    c = base_config()
    model_presets.apply_preset(c, "qwen3-100m", dtype="float32", param_dtype="float32", remat=remat)
    c.data.source, c.data.seq_len, c.data.batch_size = "synthetic", seq, batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.optim.lr, c.optim.weight_decay = 1e-4, 0.01
    c.train.logprob_chunk = chunk
    c.train.fused_head = (
        fused  # with a chunk: the head gradient formed in the forward pass (train/fused_head.py)
    )
    validate(c, num_devices=1)
    dev = jax.devices()[:1]
    run = build_run(c, devices=dev)
    state = jax.jit(lambda p: init_train_state(p, run.optimizer, 0), out_shardings=run.state_sharding)(
        initial_params(c, run)
    )
    it = SyntheticSFTIterator(run.model_cfg.vocab_size, seq, batch, 0)
    sh = batch_sharding(run.mesh_rules)
    # Full rows (one document each), like the torch anchor: every position is trained.
    batches = []
    for _ in range(steps + 1):
        b = next(it)
        b["segment_ids"][:] = 1
        b["positions"][:] = list(range(seq))
        b["loss_mask"][:] = 1
        batches.append(to_global(b, sh))
    t = time.perf_counter()
    state, m = run.train_step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times = []
    for b in batches[1:]:
        t = time.perf_counter()
        state, m = run.train_step(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    fpt = train_flops_per_token(run.model_cfg, seq)
    peak = measure_cpu_peak_flops(n=2048) if jax.devices()[0].platform == "cpu" else float("nan")
    tps = batch * seq / med
    return {
        "device": str(jax.devices()[0].device_kind),
        "params": count_params(run.model_cfg),
        "flops_per_token": fpt,
        "compile_plus_first_s": compile_s,
        "step_s": med,
        "tokens_per_s": tps,
        "achieved_gflops": tps * fpt / 1e9,
        "peak_gflops_measured": peak / 1e9,
        "mfu_vs_measured_peak": tps * fpt / peak,
        "loss": float(m["loss"]),
    }


def torch_bench(seq: int, batch: int, steps: int) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=64, intermediate_size=1536, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096)  # fmt: skip
    model = Qwen3ForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, 151643, (batch, seq), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"threads": torch.get_num_threads(), "step_s": med, "tokens_per_s": batch * seq / med}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--chunk", type=int, default=0, help="logprob time chunk (0 = full logits, as torch)")
    ap.add_argument("--unfused", action="store_true", help="with --chunk: recompute chunk logits in backward")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args(argv)
    res = {"jax": jax_bench(a.seq, a.batch, a.steps, a.remat, a.chunk, not a.unfused)}
    if not a.no_torch:
        res["torch"] = torch_bench(a.seq, a.batch, a.steps)
        res["jax_over_torch_tokens_per_s"] = res["jax"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
