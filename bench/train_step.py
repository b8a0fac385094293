"""Training throughput of the JAX SFT step vs PyTorch AdamW and tunix PeftTrainer steps on the ~100M anchor Qwen3.

  python bench/train_step.py [--steps 3] [--repeats 3] [--seq 512] [--batch 4] [--chunk 0] [--unfused]
                             [--no-torch] [--bf16] [--remat none] [--tunix-python PY]

Peers, all fp32, AdamW(lr 1e-4, weight decay 0.01), random token ids, every position trained, same batch/seq:
- jax: storm_jax's SFT step on storm_jax/configs/model_presets.py "qwen3-100m";
- torch: transformers Qwen3ForCausalLM + torch.optim.AdamW;
- tunix: google-tunix's PeftTrainer, full-parameter, optax.adamw (bench/peers/tunix_train_step.py), run in its own
  venv named by --tunix-python or STORM_TUNIX_PYTHON (without one the column is skipped):

    python3 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7

Timing: each peer is built once and takes one untimed warm-up step (compiles). Then --repeats rounds; in each round
jax, torch and tunix in turn each time --steps steps (one after another, never concurrently), so a slow spell of the
shared machine lands on all columns. A round's value is the median step wall time; a peer's step_s is the median over
rounds, tokens/s = batch * seq / step_s. The jax state, the torch model and the tunix trainer persist across rounds
(training simply continues); tunix is one subprocess for the whole run, kept in lock step over stdin/stdout, so it
is compiled once like the others. What the tunix column times exactly: see its module docstring (the jitted
PeftTrainer train step, called directly). Prints the JSON result (with jax/torch and jax/tunix ratios, overall and per
round), then one line per peer. MFU is against the fp32 matmul peak of this host, measured in the same run.
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
from collections.abc import Callable
from pathlib import Path

from peers.anchor import ANCHOR, hf_qwen3_config  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
Timer = Callable[[], list[float]]  # times `steps` steps of a warmed-up peer; the wall time of each


def build_jax_run(
    seq: int, batch: int, n_batches: int, remat: str, chunk: int, fused: bool = True, dtype: str = "float32"
):
    """storm_jax's SFT run on the anchor preset (fp32 master weights; `dtype` the compute dtype), its initial
    state and `n_batches` full-row batches on the device: (run, state, batches)."""
    import jax

    from storm_jax.config import base_config, validate
    from storm_jax.configs import model_presets
    from storm_jax.train.sft import SyntheticSFTIterator, build_run, initial_params, to_global
    from storm_jax.train.state import init_train_state
    from storm_jax.train.step import batch_sharding

    c = base_config()
    model_presets.apply_preset(c, "qwen3-100m", dtype=dtype, param_dtype="float32", remat=remat)
    c.data.source, c.data.seq_len, c.data.batch_size = "synthetic", seq, batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.optim.lr, c.optim.weight_decay = 1e-4, 0.01
    c.train.logprob_chunk = chunk
    c.train.fused_head = (
        fused  # with a chunk: the head gradient formed in the forward pass (train/fused_head.py)
    )
    validate(c, num_devices=1)
    run = build_run(c, devices=jax.devices()[:1])
    state = jax.jit(lambda p: init_train_state(p, run.optimizer, 0), out_shardings=run.state_sharding)(
        initial_params(c, run)
    )
    it = SyntheticSFTIterator(run.model_cfg.vocab_size, seq, batch, 0)
    sh = batch_sharding(run.mesh_rules)
    # Full rows (one document each), like the torch anchor: every position is trained.
    batches = []
    for _ in range(n_batches):
        b = next(it)
        b["segment_ids"][:] = 1
        b["positions"][:] = list(range(seq))
        b["loss_mask"][:] = 1
        batches.append(to_global(b, sh))
    return run, state, batches


def jax_peer(
    seq: int, batch: int, steps: int, remat: str, chunk: int, fused: bool = True, dtype: str = "float32"
) -> tuple[Timer, dict]:
    """Builds storm_jax's SFT run once and takes the warm-up step; the timer re-times the same `steps` batches."""
    import jax

    from storm_jax.train.metrics import count_params, train_flops_per_token

    run, state, batches = build_jax_run(seq, batch, steps + 1, remat, chunk, fused, dtype)
    t = time.perf_counter()
    state, m = run.train_step(state, batches[0])
    jax.block_until_ready(m)
    info = {
        "device": str(jax.devices()[0].device_kind),
        "params": count_params(run.model_cfg),
        "flops_per_token": train_flops_per_token(run.model_cfg, seq),
        "compile_plus_first_s": time.perf_counter() - t,
    }
    box = {"state": state}  # the state is carried from round to round

    def timer() -> list[float]:
        times = []
        for b in batches[1:]:
            t = time.perf_counter()
            box["state"], m = run.train_step(box["state"], b)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        info["loss"] = float(m["loss"])
        return times

    return timer, info


def torch_peer(seq: int, batch: int, steps: int) -> tuple[Timer, dict]:
    """transformers Qwen3ForCausalLM + torch AdamW, built once, one warm-up step; fresh random ids every step."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = hf_qwen3_config()
    model = Qwen3ForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    info = {"threads": torch.get_num_threads(), "version": torch.__version__}

    def step() -> None:
        ids = torch.randint(0, 151643, (batch, seq), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        info["loss"] = loss.detach().item()

    step()

    def timer() -> list[float]:
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return times

    return timer, info


class TunixPeer:
    """bench/peers/tunix_train_step.py in tunix's venv, one process for the whole run, driven round by round."""

    def __init__(self, python: str, seq: int, batch: int, steps: int, rounds: int):
        self.dir = tempfile.TemporaryDirectory()
        spec = {"config": ANCHOR, "seq": seq, "batch": batch, "steps": steps, "rounds": rounds,
                "lr": 1e-4, "weight_decay": 0.01, "seed": 0}  # fmt: skip
        spec_path = os.path.join(self.dir.name, "spec.json")
        self.out_path = os.path.join(self.dir.name, "out.json")
        json.dump(spec, open(spec_path, "w"))
        # As bench/sampler.py: the peer runs with its own XLA defaults, not flags meant for storm_jax.
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        self.cmd = [python, str(ROOT / "bench" / "peers" / "tunix_train_step.py"), spec_path, self.out_path]
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.ok = self._wait_for("TUNIX_READY")  # the warm-up step: blocks, so nothing else runs meanwhile

    def _wait_for(self, marker: str) -> bool:
        """Relays the peer's stdout until `marker`; False if the peer ended first."""
        for line in self.proc.stdout:
            if line.strip() == marker:
                return True
            print(line, end="", flush=True)
        print(f"tunix column skipped: {' '.join(self.cmd)} exited with {self.proc.wait()}", flush=True)
        return False

    def timer(self) -> list[float]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.ok = self._wait_for("TUNIX_ROUND_DONE")
        return json.load(open(self.out_path))["rounds"][-1] if self.ok else []

    def close(self) -> dict:
        """Ends the peer; its info (versions, params, warm-up time, last loss), or {} if it failed."""
        out = json.load(open(self.out_path)) if self.ok and os.path.exists(self.out_path) else {}
        self.proc.stdin.close()
        self.proc.wait()
        self.dir.cleanup()
        out.pop("rounds", None)
        return out


def summarize(info: dict, rounds: list[list[float]], seq: int, batch: int) -> dict:
    """Median step per round, median over rounds, tokens/s."""
    per_round = [statistics.median(r) for r in rounds]
    med = statistics.median(per_round)
    return {**info, "step_s": med, "rounds_step_s": per_round, "tokens_per_s": batch * seq / med}


def cpu_model() -> str:
    """`lscpu`'s model name (the figures hold for this CPU only)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="timed steps per peer per round")
    ap.add_argument(
        "--repeats", type=int, default=3, help="alternating rounds (jax, torch, tunix) of --steps steps"
    )
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--chunk", type=int, default=0, help="logprob time chunk (0 = full logits, as torch)")
    ap.add_argument("--unfused", action="store_true", help="with --chunk: recompute chunk logits in backward")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="also a jax_bf16 column: bf16 compute, fp32 master weights and loss",
    )
    ap.add_argument(
        "--tunix-python", default=os.environ.get("STORM_TUNIX_PYTHON"), help="python of a tunix venv"
    )
    a = ap.parse_args(argv)

    peers: dict[str, tuple[Timer, dict]] = {
        "jax": jax_peer(a.seq, a.batch, a.steps, a.remat, a.chunk, not a.unfused)
    }
    if a.bf16:
        peers["jax_bf16"] = jax_peer(a.seq, a.batch, a.steps, a.remat, a.chunk, not a.unfused, "bfloat16")
    if not a.no_torch:
        peers["torch"] = torch_peer(a.seq, a.batch, a.steps)
    tunix = None
    if a.tunix_python:
        tunix = TunixPeer(a.tunix_python, a.seq, a.batch, a.steps, a.repeats)
        if tunix.ok:
            peers["tunix"] = (tunix.timer, {})
    else:
        print("tunix column skipped: no --tunix-python (or STORM_TUNIX_PYTHON) given", flush=True)

    rounds: dict[str, list[list[float]]] = {name: [] for name in peers}
    for _ in range(a.repeats):
        for name, (timer, _) in peers.items():
            times = timer()
            if times:  # the tunix peer returns nothing once it has failed
                rounds[name].append(times)
    if tunix is not None:
        info = tunix.close()
        if "tunix" in peers:
            peers["tunix"] = (tunix.timer, info)

    import jax

    from storm_jax.train.metrics import measure_cpu_peak_flops

    res = {
        name: summarize(info, rounds[name], a.seq, a.batch)
        for name, (_, info) in peers.items()
        if rounds[name]
    }
    # After the rounds, so the matmul peak measurement does not heat or load the machine during them.
    peak = measure_cpu_peak_flops(n=2048) if jax.devices()[0].platform == "cpu" else float("nan")
    j = res["jax"]
    j["achieved_gflops"] = j["tokens_per_s"] * j["flops_per_token"] / 1e9
    j["peak_gflops_measured"] = peak / 1e9
    j["mfu_vs_measured_peak"] = j["tokens_per_s"] * j["flops_per_token"] / peak
    res["setup"] = {"seq": a.seq, "batch": a.batch, "steps": a.steps, "repeats": a.repeats, "chunk": a.chunk,
                    "fused": not a.unfused, "remat": a.remat, "cpu": cpu_model()}  # fmt: skip
    for peer in ("torch", "tunix"):
        if peer in res:
            res[f"jax_over_{peer}_tokens_per_s"] = j["tokens_per_s"] / res[peer]["tokens_per_s"]
            # Ratio within each round (the alternation pairs them), to see the spread of the overall one.
            res[f"jax_over_{peer}_per_round"] = [
                p / q for p, q in zip(res[peer]["rounds_step_s"], j["rounds_step_s"])
            ]
    print(json.dumps(res, indent=2))
    if "jax_bf16" in res:
        res["jax_bf16_over_jax_tokens_per_s"] = res["jax_bf16"]["tokens_per_s"] / j["tokens_per_s"]
    for name in ("jax", "jax_bf16", "torch", "tunix"):
        if name in res:
            r = res[name]
            ratio = f"jax/{name} {j['tokens_per_s'] / r['tokens_per_s']:.2f}x" if name != "jax" else ""
            print(f"{name:6s} step {r['step_s']:.3f}s  {r['tokens_per_s']:9.1f} tok/s  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
