"""Peer column for bench/train_step.py: google-tunix's `PeftTrainer`, full-parameter AdamW, on the ~100M Qwen3.

Runs inside a separate virtual environment with tunix installed (tunix 0.1.7 pins safetensors<0.8, which clashes
with the transformers in storm_jax's venv), so it imports nothing from storm_jax:

    python3 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7

(that pulls in jax/jaxlib with the CPU backend, flax, optax; nothing else is needed on CPU.)

bench/train_step.py calls it as `TUNIX_PYTHON bench/peers/tunix_train_step.py SPEC.json OUT.json`, where SPEC.json
holds {"config": {...HF Qwen3Config fields...}, "seq": S, "batch": B, "steps": N, "rounds": R, "lr": .., "weight_decay":
.., "seed": ..}. It builds the model (random init, fp32, tunix.models.qwen3 with the given shape, tied embeddings)
and a `PeftTrainer` with `optax.adamw(lr, weight_decay=wd)`; with no LoRA parameters in the model PeftTrainer updates
every `nnx.Param` (full-parameter training). The loss is PeftTrainer's default (next-token cross entropy over the full
vocabulary, via log_softmax); every position is trained (input_mask all ones).

Protocol (so the parent can alternate it with its other columns without recompiling): after the warm-up step it prints
the line `TUNIX_READY`; then for each of the R rounds it reads one line from stdin (a go signal; at EOF, e.g.
`< /dev/null`, it runs the rounds back to back), times N steps, rewrites OUT.json and prints `TUNIX_ROUND_DONE`.
OUT.json: {"versions": .., "params": .., "compile_plus_first_s": .., "rounds": [[step_s, ...], ...], "loss": ..}.

What is timed: the warm-up step runs through the ordinary `PeftTrainer.train` loop (max_steps=1), which jit-compiles
and caches the train step. Each timed step then calls that same cached, `nnx.jit`-ed `PeftTrainer._train_step`
(`trainer.jit_train_and_eval_step()[0]`: loss + grads + optimizer update in one executable, with its input fn)
directly on a device-resident batch and blocks on its loss, as the storm_jax column blocks on its metrics. The
trainer loop's own per-step overhead (throttler, metric buffering, progress bar) is not timed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from anchor import tunix_qwen3_config  # bench/peers/ is sys.path[0] when run as a script


def build(spec: dict):
    """The tunix Qwen3 model, a full-parameter PeftTrainer over it, and N+1 device-resident random batches."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3_model
    from tunix.sft import peft_trainer
    from tunix.sft import utils as sft_utils

    c = spec["config"]
    cfg = tunix_qwen3_config(
        c, dtype=jnp.float32, param_dtype=jnp.float32, remat_config=qwen3_model.RematConfig.NONE
    )
    model = qwen3_model.Qwen3(cfg, rngs=nnx.Rngs(params=int(spec["seed"])))
    opt = optax.adamw(float(spec["lr"]), weight_decay=float(spec["weight_decay"]))
    # max_steps=1: the warm-up goes through one ordinary `train` call; no checkpoint directory, no eval.
    tcfg = peft_trainer.TrainingConfig(eval_every_n_steps=1 << 30, max_steps=1, pbar_description=None)
    trainer = peft_trainer.PeftTrainer(model, opt, tcfg)

    def gen_model_input_fn(x: peft_trainer.TrainingInput) -> dict:
        # As tunix/cli/peft_main.py, but from input_mask: random ids may contain 0, which that CLI treats as padding.
        return {
            "input_tokens": x.input_tokens,
            "input_mask": x.input_mask,
            "positions": sft_utils.build_positions_from_mask(x.input_mask),
            "attention_mask": sft_utils.make_causal_attn_mask(x.input_mask),
        }

    trainer = trainer.with_gen_model_input_fn(gen_model_input_fn)
    rng = np.random.default_rng(int(spec["seed"]))
    B, S = int(spec["batch"]), int(spec["seq"])
    batches = [
        peft_trainer.TrainingInput(
            input_tokens=jax.device_put(rng.integers(0, 151643, (B, S), dtype=np.int32)),
            input_mask=jax.device_put(np.ones((B, S), dtype=bool)),
        )
        for _ in range(int(spec["steps"]) + 1)
    ]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return trainer, batches, n_params


def main(spec_path: str, out_path: str) -> int:
    import jax
    import tunix

    spec = json.load(open(spec_path))
    trainer, batches, n_params = build(spec)
    t = time.perf_counter()
    trainer.train(batches[:1])  # warm-up: one step through the trainer loop (compiles and caches the step)
    compile_s = time.perf_counter() - t
    step_fn, _ = trainer.jit_train_and_eval_step()  # the cached nnx.jit'd step that `train` just ran
    out = {
        "versions": f"tunix {tunix.__version__}, jax {jax.__version__} ({jax.devices()[0].platform})",
        "params": int(n_params),
        "compile_plus_first_s": compile_s,
        "rounds": [],
        "loss": None,
    }
    print(f"{out['versions']}, params {n_params:,}, warm-up {compile_s:.1f}s", flush=True)
    print("TUNIX_READY", flush=True)
    for _ in range(int(spec["rounds"])):
        sys.stdin.readline()  # go signal from bench/train_step.py (returns "" at EOF: run on)
        times = []
        for b in batches[1:]:
            t = time.perf_counter()
            loss, _, _ = step_fn(b)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
        out["rounds"].append(times)
        out["loss"] = float(loss)
        json.dump(out, open(out_path, "w"))
        print(f"tunix round: median step {statistics.median(times):.3f}s", flush=True)
        print("TUNIX_ROUND_DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
