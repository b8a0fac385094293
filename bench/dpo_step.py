"""DPO train-step throughput beside the SFT step on the same model and the same token count per step.

  python bench/dpo_step.py [--preset qwen3-100m] [--seq 512] [--batch 4] [--steps 4] [--chunk 128]

SFT trains `batch` rows of `seq` tokens; DPO trains batch/2 pairs ([P, 2, seq], the same batch*seq positions)
with precomputed reference log-probs (the default dpo.reference): no reference model in the step, so the two
steps should cost the same up to the DPO loss's pair reduction. Both steps run interleaved (SFT, DPO, SFT, ...)
so load from other processes hits both alike; the medians are compared. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-100m")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4, help="SFT rows = 2 x DPO pairs")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=128)
    a = ap.parse_args()

    import jax
    import numpy as np

    from storm_jax.config import base_config
    from storm_jax.configs import model_presets
    from storm_jax.train.dpo_loss import make_dpo_loss
    from storm_jax.train.loop import to_global
    from storm_jax.train.losses import make_loss
    from storm_jax.train.setup import build_setup, initial_params
    from storm_jax.train.step import batch_sharding

    c = base_config()
    model_presets.apply_preset(c, a.preset, dtype="float32", param_dtype="float32", remat="none")
    c.data.seq_len, c.data.batch_size, c.train.logprob_chunk = a.seq, a.batch, a.chunk
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    setup = build_setup(c, devices=jax.devices()[:1])
    sh = batch_sharding(setup.mesh_rules)
    rng = np.random.default_rng(0)
    B, T, P = a.batch, a.seq, a.batch // 2

    def rows(shape):  # full rows, every position trained (as bench/train_step.py)
        ids = rng.integers(1, setup.model_cfg.vocab_size, (*shape, T + 1), dtype=np.int32)
        return {"tokens": ids[..., :-1], "targets": ids[..., 1:], "loss_mask": np.ones((*shape, T), np.float32),
                "segment_ids": np.ones((*shape, T), np.int32),
                "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (*shape, T)).copy()}  # fmt: skip

    def sft_batch():
        b = rows((B,))
        return to_global(b, sh)

    def dpo_batch():
        b = rows((P, 2))
        b["weight"] = rng.uniform(0.1, 1.0, P).astype(np.float32)
        b["ref_logps"] = rng.uniform(-T * 12.0, -T * 11.0, (P, 2)).astype(np.float32)
        return to_global(b, sh)

    params = initial_params(c, setup)
    steps = {
        "sft": (setup.train_step(make_loss("sft", chunk_size=a.chunk, mesh_rules=setup.mesh_rules)), sft_batch),
        "dpo": (setup.train_step(make_dpo_loss(beta=0.1, chunk_size=a.chunk, mesh_rules=setup.mesh_rules)),
                dpo_batch),
    }  # fmt: skip
    states = {k: setup.init_state(params) for k in steps}
    batches = {k: [make() for _ in range(a.steps + 1)] for k, (_, make) in steps.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(a.steps + 1):
        for k, (fn, _) in steps.items():
            t = time.perf_counter()
            states[k], m = fn(states[k], batches[k][i])
            jax.block_until_ready(m)
            if i:  # step 0 compiles
                times[k].append(time.perf_counter() - t)
    tps = {k: B * T / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "device": str(jax.devices()[0].device_kind), "preset": a.preset, "positions_per_step": B * T,
        "sft_tokens_per_s": round(tps["sft"], 1), "dpo_tokens_per_s": round(tps["dpo"], 1),
        "dpo_over_sft": round(tps["dpo"] / tps["sft"], 3),
        "step_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
