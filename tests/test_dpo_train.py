"""The DPO trainer (storm_jax.train.dpo.train_dpo, `storm-jax train dpo`) on the shared loop.

- As a library function twice in one process: round 2 starts from round 1's params and, by default, uses them
  as its frozen reference (step 1 of each round has delta = 0: loss = log 2 * sum(w) / P exactly as computed
  here); the caller's arrays survive.
- One step on a (2, 2, 2) fake-device mesh equals the single-device step.
- SIGKILL mid-run, resume: every step's loss and the final params are bit-identical to the uninterrupted run,
  for precomputed (stored pairs) and on-the-fly (reference params in the checkpoint) reference log-probs.
- The command's config and data errors are one line naming the key / file:line and field, exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from tolerances import adam_first_step_atol, assert_within, fp32_pair_bounds, logits_depth, summed_logp_atol

from storm_jax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, T = 256, 32
QUIET = lambda *a: None  # noqa: E731


def token_rows(n: int, seed: int) -> list[dict]:
    """Random token rows: a shared prompt, responses of different lengths, a masked "tool output" span."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        lc, lr = int(rng.integers(6, 14)), int(rng.integers(6, 14))
        mc = [1] * lc
        mc[2:4] = [0, 0]  # tool output: no loss
        rows.append({"prompt_ids": rng.integers(1, VOCAB, int(rng.integers(3, 8))).tolist(),
                     "chosen_ids": rng.integers(1, VOCAB, lc).tolist(), "chosen_mask": mc,
                     "rejected_ids": rng.integers(1, VOCAB, lr).tolist(), "rejected_mask": [1] * lr,
                     "weight": float(rng.choice([0.0, 0.25, 1.0, 2.0]))})  # fmt: skip
    return rows


def dpo_cfg(workdir, *extra, num_devices=1):
    return load_config(
        "steporlm_dpo:tiny",
        [f"workdir={workdir}", f"model.vocab_size={VOCAB}", f"data.seq_len={T}", "train.logprob_chunk=8",
         "train.log_every=1", "train.progress=false", "data.path=<rows>", "data.batch_size=4",
         "dpo.ref_batch_pairs=4", "checkpoint.save_every=100", "train.steps=2", "optim.warmup_steps=0",
         *extra],
        num_devices=num_devices,
    )  # fmt: skip


def step_losses(workdir) -> dict[int, float]:
    out = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        r = json.loads(line)
        if r["split"] == "train":
            out[r["step"]] = r["loss"]
    return out


def first_batch(cfg, workdir):
    """The first batch the run trained on, rebuilt from its stored pairs with the run's iterator settings."""
    from storm_jax.data import preference as pref
    from storm_jax.train.dpo import stored_pairs_path

    pairs, _ = pref.load_pairs(stored_pairs_path(str(workdir)), vocab_size=VOCAB)
    dcfg = pref.PreferenceDataConfig(path="-", seq_len=T, batch_size=cfg.data.batch_size, seed=cfg.seed)
    return next(pref.make_preference_iterator(dcfg, pairs=pairs, process_index=0, process_count=1)), pairs


def test_train_dpo_as_a_library_function_two_rounds(tmp_path):
    from storm_jax.config import model_config
    from storm_jax.models.qwen import init_params
    from storm_jax.train.dpo import train_dpo
    from storm_jax.train.dpo_loss import pair_logps

    devs = jax.devices()[:1]
    cfg1, cfg2 = dpo_cfg(tmp_path / "r1"), dpo_cfg(tmp_path / "r2")
    mc = model_config(cfg1)
    p0 = init_params(mc, jax.random.key(7))  # not cfg.seed's init
    rows = token_rows(12, seed=1)
    r1 = train_dpo(cfg1, rows=rows, params=p0, echo=QUIET, devices=devs)
    p1 = jax.device_get(r1["state"].params)
    r2 = train_dpo(cfg2, rows=token_rows(12, seed=2), params=r1["state"].params, echo=QUIET, devices=devs)
    assert r1["step"] == r2["step"] == 2 and r1["pairs"] == r2["pairs"] == 12

    for cfg, wd, start, other in ((cfg1, tmp_path / "r1", p0, p1), (cfg2, tmp_path / "r2", p1, p0)):
        batch, pairs = first_batch(cfg, wd)
        # The stored reference values are the start params' summed log-probs (not another round's params).
        b = {k: np.asarray(v) for k, v in batch.items()}
        want_ref = np.asarray(pair_logps(jax.device_get(start), mc, b))
        # the run's compiled reference pass vs this eager one: two programs (tests/tolerances.py)
        S = summed_logp_atol(jax.device_get(start), mc, b, logits_depth(mc, b["tokens"].shape[-1]))
        assert_within(b["ref_logps"], want_ref, S, "stored reference log-probs")
        assert np.abs(np.asarray(pair_logps(jax.device_get(other), mc, b)) - want_ref).max() > 1e-3
        # Step 1 runs at the start params = the reference: delta = 0, loss = log 2 * sum(w) / P.
        want = np.log(2.0) * b["weight"].sum() / len(b["weight"])
        # the step's compiled policy pass vs the stored reference: delta = beta (S_c + S_r) at most; then the pair
        # loss's fp32 error at delta = 0 (tests/tolerances.py fp32_pair_bounds)
        lp = want_ref.astype(np.float64)
        bound = fp32_pair_bounds(lp[:, 0], lp[:, 1], lp[:, 0], lp[:, 1], b["weight"], beta=cfg.dpo.beta,
                                 reference_free=False, ls=cfg.dpo.label_smoothing, normalize=cfg.dpo.normalize,
                                 d_logp=S.max(-1))["loss"]  # fmt: skip
        assert_within(step_losses(wd)[1], want, bound, "step-1 loss at delta = 0")
        assert step_losses(wd)[2] != pytest.approx(step_losses(wd)[1], abs=1e-6)
    # The caller's arrays survive the (donating) train step of the next round.
    for a, b in zip(jax.tree.leaves(jax.device_get(r1["state"].params)), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two compiles, one of them for 8 devices
def test_one_step_on_a_2x2x2_mesh_equals_single_device(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    from storm_jax.train.dpo import train_dpo

    rows = token_rows(8, seed=3)
    out = {}
    for name, devs, mesh in (
        ("one", jax.devices()[:1], ("1", "1", "1")),
        ("mesh", jax.devices(), ("2", "2", "2")),
    ):
        cfg = dpo_cfg(tmp_path / name, "train.steps=1", "data.batch_size=8", "dpo.ref_batch_pairs=8",
                      f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}",
                      num_devices=len(devs))  # fmt: skip
        res = train_dpo(cfg, rows=rows, echo=QUIET, devices=devs)
        out[name] = (res["metrics"], jax.device_get(res["state"].params))
    (m1, p1), (m8, p8) = out["one"], out["mesh"]
    # Two programs of one step (tests/tolerances.py): rebuild its batch, start params and gradient here.
    from storm_jax.config import model_config
    from storm_jax.models.qwen import init_params
    from storm_jax.train.dpo_loss import loss_from_config

    cfg = dpo_cfg(tmp_path / "one", "train.steps=1", "data.batch_size=8", "dpo.ref_batch_pairs=8")
    mc = model_config(cfg)
    batch, _ = first_batch(cfg, tmp_path / "one")
    b = {k: np.asarray(v) for k, v in batch.items()}
    p0 = jax.device_get(jax.jit(lambda k: init_params(mc, k))(jax.random.key(cfg.seed)))
    loss_fn = loss_from_config(cfg.dpo, chunk_size=int(cfg.train.logprob_chunk), mesh_rules=None)
    grads = jax.device_get(jax.grad(lambda p: loss_fn(p, b, mc)[0])(p0))
    Tn = b["tokens"].shape[-1]
    S = summed_logp_atol(p0, mc, b, logits_depth(mc, Tn))
    lp = b["ref_logps"].astype(np.float64)  # policy == reference at step 1: delta = 0 up to S
    loss_atol = 2 * fp32_pair_bounds(lp[:, 0], lp[:, 1], lp[:, 0], lp[:, 1], b["weight"], beta=cfg.dpo.beta,
                                     reference_free=False, ls=cfg.dpo.label_smoothing, normalize=cfg.dpo.normalize,
                                     d_logp=S.max(-1))["loss"]  # fmt: skip
    assert_within(m8["loss"], m1["loss"], loss_atol, "loss")
    depth = 2 * logits_depth(mc, Tn) + 2 * 8 * Tn + Tn + 8 + 4
    params_atol, norm_atol = adam_first_step_atol(grads, p0, lr=float(cfg.optim.lr), eps=float(cfg.optim.eps),
                                                  clip_norm=float(cfg.optim.clip_norm), depth=depth)  # fmt: skip
    assert_within(m8["grad_norm"], m1["grad_norm"], norm_atol, "grad_norm")
    assert m8["sum_pairs"] == m1["sum_pairs"] == 8 and m8["sum_pair_weight"] == m1["sum_pair_weight"]
    assert m1["grad_norm"] > 0
    for a, b_, tol in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), jax.tree.leaves(params_atol)):
        assert_within(a, b_, tol, "params")


# ----------------------------------------------------------------------------------------------------------------
# The command: SIGKILL + resume, one-line errors
# ----------------------------------------------------------------------------------------------------------------

N = 3


def cli(workdir, data, *extra, fault_at=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("STORM_JAX_FAULT_AT_STEP", None)
    if fault_at:
        env["STORM_JAX_FAULT_AT_STEP"] = str(fault_at)
    args = [sys.executable, "-m", "storm_jax.train.cli", "dpo", "--config=steporlm_dpo:tiny",
            f"--config.workdir={workdir}", f"--config.data.path={data}", f"--config.model.vocab_size={VOCAB}",
            f"--config.data.seq_len={T}", "--config.train.logprob_chunk=8", f"--config.train.steps={2 * N}",
            "--config.train.log_every=1", f"--config.checkpoint.save_every={N}", "--config.checkpoint.keep=5",
            "--config.train.progress=false", "--config.data.batch_size=4", "--config.dpo.ref_batch_pairs=4",
            "--config.optim.warmup_steps=2", "--config.optim.lr=1e-2", *extra]  # fmt: skip
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def write_rows(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


# Both slow (~3.5 min each on 2 cores: three subprocess runs); the loss, mesh and library tests stay default.
@pytest.mark.slow
@pytest.mark.parametrize("reference", ["precomputed", "on_the_fly"])
def test_sigkill_then_resume_is_exact(tmp_path, reference):
    from storm_jax.train.setup import load_run_state

    data = write_rows(tmp_path / "pairs.jsonl", token_rows(10, seed=4))
    opt = f"--config.dpo.reference={reference}"
    ref, crash = str(tmp_path / "ref"), str(tmp_path / "crash")
    rc, out = cli(ref, data, opt)
    assert rc == 0, out
    rc, out = cli(crash, data, opt, fault_at=N + 1)
    assert rc == -signal.SIGKILL, out
    assert sorted(os.listdir(os.path.join(crash, "checkpoints"))) == [str(N)]
    # The resume must not recompute the reference from whatever params it has: make the stored values the
    # only source (the data file is gone; rows given now would not be used either).
    os.remove(data)
    rc, out = cli(crash, data, opt)
    assert rc == 0, out
    assert f"at step {N}" in out
    lr, lc = step_losses(ref), step_losses(crash)
    assert sorted(lr) == sorted(lc) == list(range(1, 2 * N + 1))
    for s in lr:
        assert lc[s] == lr[s], (s, lc[s], lr[s])  # bit-identical on CPU
    assert len(set(lr.values())) == 2 * N
    _, _, sr, step_r = load_run_state(ref, devices=jax.devices()[:2])
    _, _, sc, step_c = load_run_state(crash, devices=jax.devices()[:2])
    assert step_r == step_c == 2 * N
    for a, b in zip(jax.tree.leaves(jax.device_get(sr.params)), jax.tree.leaves(jax.device_get(sc.params))):
        np.testing.assert_array_equal(a, b)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from storm_jax.train.cli import main

    rows = token_rows(4, seed=5)
    rows[2]["weight"] = -1.0
    data = write_rows(tmp_path / "bad.jsonl", rows)
    base = ["dpo", "--config=steporlm_dpo:tiny", f"--config.workdir={tmp_path / 'w'}", f"--config.data.path={data}",
            f"--config.model.vocab_size={VOCAB}", f"--config.data.seq_len={T}", "--config.train.logprob_chunk=8",
            "--config.train.progress=false", "--config.data.batch_size=8", "--config.dpo.ref_batch_pairs=8"]  # fmt: skip
    for extra, needle in ((["--config.dpo.beta=0"], "dpo.beta"), (["--config.dpo.reference=ref"], "dpo.reference"),
                          ([], f"{data}:3: weight: must be >= 0")):  # fmt: skip
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
